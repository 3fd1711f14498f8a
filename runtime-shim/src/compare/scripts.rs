//! The probe scripts, run by the image's busybox `sh` inside each container. Each prints
//! `key=value` lines that `probe::parse` reads. Every drill bounds itself: it checks that the
//! limit it is meant to meet is in force before it starts, and stops after a fixed time.

/// What the workload sees of the kernel and host, plus the unprivileged module and kernel-log
/// drills. Ends with an idle second so the host can sample the sandbox's memory.
pub const SEES: &str = r#"mkdir -p /tmp
echo "kernel_release=$(uname -r)"
echo "kernel_build=$(uname -v)"
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "pids=$n"
echo "mounts=$(wc -l < /proc/mounts)"
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "dev_count=$(ls /dev | wc -l)"
echo "block_devices=$(ls /sys/class/block 2>/dev/null | tr '\n' ' ')"
if head -n 1 /proc/kallsyms >/dev/null 2>&1; then
  echo "kallsyms=$(wc -l < /proc/kallsyms)"
  echo "kallsyms_nonzero=$(grep -vc '^0* ' /proc/kallsyms)"
else echo "kallsyms=unreadable"; fi
if [ -e /proc/modules ]; then echo "modules=$(wc -l < /proc/modules)"; else echo "modules=absent"; fi
if dmesg > /tmp/.d 2> /tmp/.e; then echo "dmesg=$(wc -l < /tmp/.d) lines"; else echo "dmesg=refused: $(cat /tmp/.e)"; fi
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "routes=$(tail -n +2 /proc/net/route | wc -l)"
head -c 64 /dev/zero > /tmp/.empty.ko
if insmod /tmp/.empty.ko 2> /tmp/.e; then echo "insmod=loaded"; else echo "insmod=$(cat /tmp/.e)"; fi
rm -f /tmp/.d /tmp/.e /tmp/.empty.ko
sleep 1
"#;

/// What isolation costs inside the sandbox: system call latency (1-byte dd: one read and one
/// write per byte), file write throughput to the rootfs with fsync, and TCP throughput over
/// the container's own loopback (busybox httpd to wget). Needs CAP_NET_ADMIN to bring `lo` up.
pub const COSTS: &str = r#"mkdir -p /tmp
N=400000
time -f %e -o /tmp/.t dd if=/dev/zero of=/dev/null bs=1 count=$N 2>/dev/null
echo "syscall_secs=$(cat /tmp/.t)"
echo "syscall_count=$((2 * N))"
time -f %e -o /tmp/.t dd if=/dev/zero of=/tmp/.f bs=1M count=256 conv=fsync 2>/dev/null
echo "file_secs=$(cat /tmp/.t)"
echo "file_mib=256"
rm -f /tmp/.f
if ip link set lo up 2>/dev/null; then
  # A sparse 256 MiB file served by busybox httpd: the bytes come from no disk.
  mkdir -p /tmp/.www && truncate -s 256M /tmp/.www/big
  httpd -f -p 127.0.0.1:8080 -h /tmp/.www &
  sleep 0.3
  time -f %e -o /tmp/.t sh -c 'wget -q -O - http://127.0.0.1:8080/big | wc -c > /tmp/.n'
  kill %1 2> /dev/null
  wait
  echo "net_secs=$(tail -n 1 /tmp/.t)"
  echo "net_bytes=$(cat /tmp/.n)"
  echo "net_mib=256"
  rm -rf /tmp/.www /tmp/.n
else echo "net=lo cannot be brought up"; fi
rm -f /tmp/.t
"#;

/// Drills in a privileged container (all capabilities, no masked paths, the host's mounted
/// block devices exposed read-only): sysrq `h` only (the kernel logs its help text), a module
/// load with an image that cannot load, reading the kernel log, reading a block device's
/// superblock magic and mounting it read-only. `BLOCK_DEVS` names the devices to try.
pub const PRIVILEGED: &str = r#"mkdir -p /tmp /tmp/.m
if [ -e /proc/sysrq-trigger ]; then
  if echo h > /proc/sysrq-trigger 2> /tmp/.e; then echo "sysrq=written"; else echo "sysrq=refused: $(cat /tmp/.e)"; fi
else echo "sysrq=absent: no /proc/sysrq-trigger in this kernel"; fi
head -c 64 /dev/zero > /tmp/.empty.ko
if insmod /tmp/.empty.ko 2> /tmp/.e; then echo "insmod=loaded"; else echo "insmod=$(cat /tmp/.e)"; fi
if dmesg > /tmp/.d 2> /tmp/.e; then echo "dmesg=$(wc -l < /tmp/.d) lines"; else echo "dmesg=refused: $(cat /tmp/.e)"; fi
for d in $BLOCK_DEVS; do
  if [ ! -b /dev/$d ]; then echo "block_$d=not visible"; continue; fi
  if dd if=/dev/$d of=/tmp/.sb bs=1 skip=1080 count=2 2> /tmp/.e; then
    echo "block_read_$d=read its ext superblock magic: $(od -An -tx1 /tmp/.sb | tr -d ' \n')"
  else echo "block_read_$d=$(tail -n 1 /tmp/.e)"; fi
  if mount -o ro /dev/$d /tmp/.m 2> /tmp/.e; then
    echo "block_mount_$d=mounted read-only: $(ls /tmp/.m | wc -l) entries at its root"
    umount /tmp/.m
  else echo "block_mount_$d=$(cat /tmp/.e)"; fi
done
rm -f /tmp/.d /tmp/.e /tmp/.sb /tmp/.empty.ko
"#;

/// A fork bomb that runs only under a pids limit of at most 1024 and stops itself after
/// `BOMB_SECS` seconds; PID 1 samples the cgroup's process count while it runs.
pub const FORK_BOMB: &str = r#"mkdir -p /tmp
cg=/sys/fs/cgroup/pids; [ -r $cg/pids.max ] || cg=/sys/fs/cgroup
if ! read max < $cg/pids.max; then echo "bomb=refused: no pids controller visible"; exit 0; fi
case "$max" in ''|max) echo "bomb=refused: no pids limit in force"; exit 0;; esac
if [ "$max" -gt 1024 ]; then echo "bomb=refused: pids limit $max is above 1024"; exit 0; fi
echo "pids_max=$max"
rm -f /tmp/.stop
sleep "$BOMB_SECS" & timer=$!
( b() { while [ ! -e /tmp/.stop ]; do b & done; }; b ) 2> /dev/null &
peak=0; samples=0
while kill -0 $timer 2> /dev/null; do
  read c < $cg/pids.current
  [ "$c" -gt "$peak" ] && peak=$c
  samples=$((samples + 1))
done
: > /tmp/.stop
echo "bomb_peak=$peak"
echo "bomb_samples=$samples"
if [ -r $cg/pids.events ]; then read ev < $cg/pids.events; echo "bomb_events=$ev"; fi
echo "bomb=stopped"
"#;

/// A memory hog that runs only under a memory limit of at most 1 GiB: one buffer 32 MiB over
/// the limit filled by dd, which the limit's OOM killer should end. (Not larger: a VM sized
/// to the limit plus its kernel's share refuses a buffer beyond its RAM at malloc, and dd
/// would then fail instead of meeting the limit.)
pub const MEMORY_HOG: &str = r#"if [ -r /sys/fs/cgroup/memory/memory.limit_in_bytes ]; then
  read lim < /sys/fs/cgroup/memory/memory.limit_in_bytes; ev=/sys/fs/cgroup/memory/memory.oom_control
elif [ -r /sys/fs/cgroup/memory.max ]; then
  read lim < /sys/fs/cgroup/memory.max; ev=/sys/fs/cgroup/memory.events
else echo "hog=refused: no memory controller visible"; exit 0; fi
case "$lim" in ''|max) echo "hog=refused: no memory limit in force"; exit 0;; esac
if [ "$lim" -gt 1073741824 ]; then echo "hog=refused: memory limit $lim is above 1 GiB"; exit 0; fi
echo "mem_limit=$lim"
dd if=/dev/zero of=/dev/null bs=$((lim / 1048576 + 32))M count=1 2> /dev/null
echo "hog_status=$?"
echo "hog_oom_kills=$(grep '^oom_kill ' $ev | cut -d' ' -f2)"
"#;

/// `true`, for start-up time.
pub const NOTHING: &str = "true";

#[cfg(test)]
mod tests {
    use super::*;

    /// The scripts must at least parse: `sh -n` reads them without running anything.
    #[test]
    fn scripts_are_valid_shell() {
        for s in [SEES, COSTS, PRIVILEGED, FORK_BOMB, MEMORY_HOG, NOTHING] {
            let out = std::process::Command::new("sh")
                .args(["-n", "-c", s])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
