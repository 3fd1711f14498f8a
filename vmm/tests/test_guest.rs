//! Boots the test guest (vmm/test-guest) with the real `sandbox-vmm` binary on /dev/kvm and
//! checks, from what the guest reports on its serial port, the machine the VMM built: the e820
//! map covers the memory it was given, the command line and the initrd are where boot_params
//! say, the MP table lists every vCPU and each vCPU sees its own APIC id, the guest reaches
//! the boot-complete port and its i8042 reset ends the VM with status 0.
//!
//! Also runs the binary with bad input: each must end with a clear error, never a panic.

mod test_guest_support;

use std::collections::BTreeSet;

use test_guest_support::{
    field, fnv1a32, guest_elf, hex_field_or_panic, kvm_available, GuestArgs, GuestReport, TempDir,
    VmmRun,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const E820_RAM: u64 = 1;

/// One entry of the e820 map the guest found in boot_params.
#[derive(Debug, Clone, Copy)]
struct E820Entry {
    start: u64,
    end: u64,
    kind: u64,
}

fn e820_entries(report: &GuestReport) -> Vec<E820Entry> {
    let lines = report.records("E820");
    let count_line = lines
        .iter()
        .find(|l| l.starts_with("E820 entries="))
        .unwrap_or_else(|| panic!("no e820 entry count:\n{}", report.text()));
    let count = hex_field_or_panic(count_line, "entries");
    let entries: Vec<E820Entry> = lines
        .iter()
        .filter(|l| l.starts_with("E820 addr="))
        .map(|l| {
            let start = hex_field_or_panic(l, "addr");
            E820Entry {
                start,
                end: start + hex_field_or_panic(l, "size"),
                kind: hex_field_or_panic(l, "type"),
            }
        })
        .collect();
    assert_eq!(entries.len() as u64, count, "{}", report.text());
    entries
}

/// Asserts that the usable RAM of the e820 map is exactly the `mem_mib` MiB the VMM was
/// given: all of it above 1 MiB announced (split around a 32-bit MMIO gap when it does not fit
/// below), nothing announced in the legacy hole or the APIC pages, and the guest touched the
/// ends of every range.
fn assert_e820_covers(report: &GuestReport, mem_mib: u64) {
    let mem = mem_mib * MIB;
    let entries = e820_entries(report);
    let usable: Vec<E820Entry> = entries
        .iter()
        .copied()
        .filter(|e| e.kind == E820_RAM)
        .collect();
    let text = report.text();

    for pair in usable.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "overlapping RAM {pair:?}:\n{text}"
        );
    }
    for e in &usable {
        assert!(
            e.end <= 0xa_0000 || e.start >= MIB,
            "RAM announced in the legacy hole (0xa0000..1 MiB): {e:?}\n{text}"
        );
        assert!(
            e.end <= 0xfec0_0000 || e.start >= 4 * GIB,
            "RAM announced over the IOAPIC/LAPIC pages: {e:?}\n{text}"
        );
    }

    let low = usable
        .iter()
        .find(|e| e.start == 0)
        .unwrap_or_else(|| panic!("no RAM at address 0:\n{text}"));
    assert!(
        low.end >= 0x9_f000,
        "less than 636 KiB of low RAM announced: {low:?}\n{text}"
    );

    // RAM above 1 MiB: one range from 1 MiB up to the end of memory or to the MMIO gap, the
    // rest (if any) from 4 GiB on.
    let high = usable
        .iter()
        .find(|e| e.start == MIB)
        .unwrap_or_else(|| panic!("no RAM range starting at 1 MiB:\n{text}"));
    if high.end >= mem {
        assert_eq!(
            high.end, mem,
            "RAM announced beyond what was given:\n{text}"
        );
    } else {
        let gap_start = high.end;
        assert!(
            gap_start >= 2 * GIB,
            "RAM below 4 GiB ends at {gap_start:#x}, before any sensible MMIO gap:\n{text}"
        );
        let above = usable
            .iter()
            .find(|e| e.start == 4 * GIB)
            .unwrap_or_else(|| panic!("RAM above the MMIO gap is not announced at 4 GiB:\n{text}"));
        assert_eq!(
            above.end - above.start,
            mem - gap_start,
            "RAM above 4 GiB is not the rest of the {mem_mib} MiB:\n{text}"
        );
    }
    let above_1mib: u64 = usable
        .iter()
        .filter(|e| e.start >= MIB)
        .map(|e| e.end - e.start)
        .sum();
    assert_eq!(above_1mib, mem - MIB, "usable RAM above 1 MiB:\n{text}");

    // The guest's own sum agrees, and it could write and read back the ends of each range.
    let total: u64 = usable.iter().map(|e| e.end - e.start).sum();
    assert_eq!(
        hex_field_or_panic(report.check("e820"), "usable_bytes"),
        total,
        "{text}"
    );
    let probe = report.check("memprobe");
    assert_eq!(
        hex_field_or_panic(probe, "probes"),
        2 * usable.len() as u64,
        "{text}"
    );
}

/// Asserts that the MP table lists `vcpus` enabled processors with distinct APIC ids, one of
/// them the BSP, and that each vCPU reported (through CPUID leaf 1, leaf 0xb when present and
/// its local APIC ID register) the APIC id the MP table gives it.
fn assert_cpus(report: &GuestReport, vcpus: u64) {
    let text = report.text();
    let mptable = report.check("mptable");
    assert_eq!(hex_field_or_panic(mptable, "cpus"), vcpus, "{text}");
    assert!(
        hex_field_or_panic(mptable, "ioapics") >= 1,
        "no IOAPIC in the MP table:\n{text}"
    );

    let mut mp_ids = BTreeSet::new();
    let mut bsp_ids = Vec::new();
    for line in report.records("MPCPU") {
        let apic = hex_field_or_panic(line, "apic");
        let flags = hex_field_or_panic(line, "flags");
        assert_eq!(
            flags & 1,
            1,
            "MP table processor not enabled: {line}\n{text}"
        );
        if flags & 2 != 0 {
            bsp_ids.push(apic);
        }
        assert!(mp_ids.insert(apic), "APIC id {apic} listed twice:\n{text}");
    }
    assert_eq!(mp_ids.len() as u64, vcpus, "{text}");
    assert_eq!(
        bsp_ids.len(),
        1,
        "the MP table must flag exactly one BSP:\n{text}"
    );

    let mut seen = BTreeSet::new();
    let mut bsp_seen = None;
    for line in report.records("CPU") {
        let cpuid_apic = hex_field_or_panic(line, "cpuid_apic");
        let lapic_id = hex_field_or_panic(line, "lapic_id");
        assert_eq!(
            cpuid_apic, lapic_id,
            "CPUID and the local APIC disagree: {line}\n{text}"
        );
        if field(line, "x2apic_id").is_some() {
            assert_eq!(
                hex_field_or_panic(line, "x2apic_id"),
                lapic_id,
                "CPUID leaf 0xb and the local APIC disagree: {line}\n{text}"
            );
        }
        assert!(
            seen.insert(lapic_id),
            "two vCPUs share APIC id {lapic_id}:\n{text}"
        );
        if field(line, "role") == Some("bsp") {
            bsp_seen = Some(lapic_id);
        }
    }
    assert_eq!(
        seen, mp_ids,
        "the vCPUs' APIC ids are not the MP table's:\n{text}"
    );
    assert_eq!(
        bsp_seen,
        Some(bsp_ids[0]),
        "the BSP is not the MP table's BSP:\n{text}"
    );
    assert_eq!(
        hex_field_or_panic(report.check("cpus"), "aps_reported"),
        vcpus - 1,
        "{text}"
    );
}

/// A recognisable initrd: a counter pattern no run of zeroes or copy of other memory matches.
fn initrd_pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn guest_sees_memory_cmdline_and_initrd_where_boot_params_say() {
    if !kvm_available("guest_sees_memory_cmdline_and_initrd_where_boot_params_say") {
        return;
    }
    let dir = TempDir::new("test-guest");
    let initrd = initrd_pattern(48 * 1024 + 123, std::process::id());
    let initrd_path = dir.file("initrd.img");
    std::fs::write(&initrd_path, &initrd).unwrap();
    let token = format!("testguest.token={:08x}", std::process::id() ^ 0x5a5a_5a5a);

    let mut args = GuestArgs::new(128, 1);
    args.cmdline = format!("console=ttyS0 reboot=k {token}");
    args.initrd = Some(initrd_path);
    let (run, report) = args.boot();
    let text = report.text();

    assert_e820_covers(&report, 128);

    report.check("cmdline");
    let echoed = report
        .records("CMDLINE")
        .into_iter()
        .find_map(|l| l.strip_prefix("CMDLINE text=["))
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("the guest did not echo the command line:\n{text}"));
    // The VMM may add its own parameters (device announcements); ours must be there whole.
    assert!(
        echoed.contains(&args.cmdline),
        "the guest's command line lacks ours ({:?}):\n{text}",
        args.cmdline
    );

    let check = report.check("initrd");
    assert_eq!(
        hex_field_or_panic(check, "size"),
        initrd.len() as u64,
        "{text}"
    );
    assert_eq!(
        hex_field_or_panic(check, "fnv1a"),
        u64::from(fnv1a32(&initrd)),
        "the initrd in guest memory is not the file we passed:\n{text}"
    );
    let addr = hex_field_or_panic(check, "addr");
    assert!(
        addr >= MIB && addr + initrd.len() as u64 <= 128 * MIB,
        "initrd at {addr:#x}:\n{text}"
    );

    assert_cpus(&report, 1);
    assert_boot_complete_seen(&report, &run);
}

/// The guest wrote the boot-complete port and the VMM reported it.
fn assert_boot_complete_seen(report: &GuestReport, run: &VmmRun) {
    let value = hex_field_or_panic(report.check("boot_complete"), "value");
    let reported = run
        .stderr
        .lines()
        .find(|l| l.starts_with("sandbox-vmm: boot-complete "))
        .unwrap_or_else(|| {
            panic!(
                "the VMM did not report the boot-complete write:\n{}",
                run.describe()
            )
        });
    let words: Vec<&str> = reported.split_whitespace().collect();
    assert_eq!(
        words.get(2),
        Some(&value.to_string().as_str()),
        "{reported}"
    );
    assert_eq!(words.get(3), Some(&"after"), "{reported}");
    assert!(
        words.get(4).is_some_and(|n| n.parse::<u64>().is_ok()),
        "no boot time in {reported:?}"
    );
}

#[test]
fn guest_without_initrd_sees_none() {
    if !kvm_available("guest_without_initrd_sees_none") {
        return;
    }
    let (_run, report) = GuestArgs::new(64, 1).boot();
    let check = report.check("initrd");
    assert!(
        check.starts_with("CHECK initrd ok none"),
        "the guest found an initrd nobody passed: {check}\n{}",
        report.text()
    );
    assert_e820_covers(&report, 64);
}

#[test]
fn e820_splits_memory_around_the_mmio_gap() {
    if !kvm_available("e820_splits_memory_around_the_mmio_gap") {
        return;
    }
    // 4 GiB cannot fit below the 32-bit MMIO gap: part of it must be announced above 4 GiB.
    let (_run, report) = GuestArgs::new(4096, 1).boot();
    assert_e820_covers(&report, 4096);
    assert!(
        e820_entries(&report)
            .iter()
            .any(|e| e.kind == E820_RAM && e.start == 4 * GIB),
        "{}",
        report.text()
    );
}

fn boot_vcpus(vcpus: u32) {
    let (_run, report) = GuestArgs::new(128, vcpus).boot();
    assert_cpus(&report, u64::from(vcpus));
}

#[test]
fn one_vcpu_sees_its_apic_id() {
    if kvm_available("one_vcpu_sees_its_apic_id") {
        boot_vcpus(1);
    }
}

#[test]
fn two_vcpus_start_and_see_their_own_apic_ids() {
    if kvm_available("two_vcpus_start_and_see_their_own_apic_ids") {
        boot_vcpus(2);
    }
}

#[test]
fn four_vcpus_start_and_see_their_own_apic_ids() {
    if kvm_available("four_vcpus_start_and_see_their_own_apic_ids") {
        boot_vcpus(4);
    }
}

#[test]
fn serial_goes_to_a_file_when_asked() {
    if !kvm_available("serial_goes_to_a_file_when_asked") {
        return;
    }
    let dir = TempDir::new("test-guest-serial");
    let log = dir.file("serial.log");
    let mut args = GuestArgs::new(64, 1);
    args.serial = format!("file:{}", log.display());
    let (run, report) = args.boot();
    assert!(
        !run.stdout.contains("TESTGUEST"),
        "serial output also went to stdout:\n{}",
        run.describe()
    );
    assert_boot_complete_seen(&report, &run);
}

// ---- bad input: a clear error and a non-zero exit status, never a panic ----

#[test]
fn missing_kernel_is_a_clear_error() {
    let dir = TempDir::new("test-guest-missing");
    let missing = dir.file("no-such-vmlinux");
    let run = VmmRun::run(
        [
            "--kernel".as_ref(),
            missing.as_os_str(),
            "--mem-mib".as_ref(),
            "64".as_ref(),
        ],
        test_guest_support::VMM_TIMEOUT,
    );
    run.assert_clear_error(&["no-such-vmlinux", "kernel"]);
}

#[test]
fn corrupt_kernel_is_a_clear_error() {
    let dir = TempDir::new("test-guest-corrupt");
    let garbage = dir.file("garbage");
    std::fs::write(&garbage, initrd_pattern(64 * 1024, 7)).unwrap();
    // An ELF cut short inside its program headers.
    let truncated = dir.file("truncated.elf");
    let elf = std::fs::read(guest_elf()).unwrap();
    std::fs::write(&truncated, &elf[..80]).unwrap();
    let empty = dir.file("empty");
    std::fs::write(&empty, b"").unwrap();

    for kernel in [&garbage, &truncated, &empty] {
        let run = VmmRun::run(
            [
                "--kernel".as_ref(),
                kernel.as_os_str(),
                "--mem-mib".as_ref(),
                "64".as_ref(),
            ],
            test_guest_support::VMM_TIMEOUT,
        );
        run.assert_clear_error(&["kernel", "elf", "bzimage", "format"]);
    }
}

#[test]
fn zero_vcpus_is_a_clear_error() {
    let mut args = GuestArgs::new(64, 0);
    args.cmdline = "console=ttyS0".into();
    let run = VmmRun::run(args.to_args(), test_guest_support::VMM_TIMEOUT);
    run.assert_clear_error(&["vcpu"]);
}

#[test]
fn memory_beyond_the_host_is_a_clear_error() {
    // 64 PiB: more than any host can map, and more than x86_64 guests can address.
    let args = GuestArgs::new(64 << 30, 1);
    let run = VmmRun::run(args.to_args(), test_guest_support::VMM_TIMEOUT);
    run.assert_clear_error(&["mem"]);
}

// ---- the checks above fail when the VMM gets it wrong (reports written by hand) ----

fn synthetic_report(lines: &[&str]) -> GuestReport {
    GuestReport::parse(&lines.join("\n"))
}

const GOOD_128_MIB_E820: &[&str] = &[
    "E820 entries=0x2",
    "E820 addr=0x0 size=0x9fc00 type=0x1",
    "E820 addr=0x100000 size=0x7f00000 type=0x1",
    "CHECK e820 ok usable_bytes=0x7f9fc00",
    "CHECK memprobe ok probes=0x4 skipped_ranges=0x0",
];

#[test]
fn e820_check_accepts_a_correct_map() {
    assert_e820_covers(&synthetic_report(GOOD_128_MIB_E820), 128);
}

#[test]
#[should_panic(expected = "RAM announced beyond what was given")]
fn e820_check_rejects_more_ram_than_given() {
    assert_e820_covers(&synthetic_report(GOOD_128_MIB_E820), 64);
}

#[test]
#[should_panic(expected = "before any sensible MMIO gap")]
fn e820_check_rejects_less_ram_than_given() {
    assert_e820_covers(&synthetic_report(GOOD_128_MIB_E820), 256);
}

#[test]
#[should_panic(expected = "legacy hole")]
fn e820_check_rejects_ram_in_the_legacy_hole() {
    let report = synthetic_report(&[
        "E820 entries=0x2",
        "E820 addr=0x0 size=0xa8000 type=0x1",
        "E820 addr=0x100000 size=0x7f00000 type=0x1",
    ]);
    assert_e820_covers(&report, 128);
}

const GOOD_TWO_CPUS: &[&str] = &[
    "MPCPU apic=0x0 flags=0x3",
    "MPCPU apic=0x1 flags=0x1",
    "CHECK mptable ok cpus=0x2 ioapics=0x1 lapic=0xfee00000",
    "CPU role=bsp cpuid_apic=0x0 x2apic_id=0x0 lapic_id=0x0",
    "CPU role=ap cpuid_apic=0x1 x2apic_id=0x1 lapic_id=0x1",
    "CHECK cpus ok aps_reported=0x1",
];

#[test]
fn cpu_check_accepts_distinct_apic_ids() {
    assert_cpus(&synthetic_report(GOOD_TWO_CPUS), 2);
}

#[test]
#[should_panic(expected = "share APIC id")]
fn cpu_check_rejects_two_vcpus_with_one_apic_id() {
    let mut lines = GOOD_TWO_CPUS.to_vec();
    lines[4] = "CPU role=ap cpuid_apic=0x0 x2apic_id=0x0 lapic_id=0x0";
    assert_cpus(&synthetic_report(&lines), 2);
}

#[test]
#[should_panic(expected = "CPUID and the local APIC disagree")]
fn cpu_check_rejects_cpuid_that_disagrees_with_the_apic() {
    let mut lines = GOOD_TWO_CPUS.to_vec();
    lines[4] = "CPU role=ap cpuid_apic=0x0 x2apic_id=0x1 lapic_id=0x1";
    assert_cpus(&synthetic_report(&lines), 2);
}
