#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/.

A handful of well-formed inputs per target (valid descriptor chains, a full virtio-mmio
driver initialisation, vsock connections, protocol exchanges, a config.json, small image
archives and layers, some aimed at the canary) from which the fuzzer starts. Run it from
anywhere; it replaces the seeds it writes and leaves other files alone.
"""

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# Guest memory layout of the device targets (fuzz/src/lib.rs).
STRIDE = 0x400
QSIZE = 16
NEXT, WRITE, INDIRECT = 1, 2, 4
ALL_FEATURES = (1 << 64) - 1


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


class Mem:
    def __init__(self, size=0x9000):
        self.b = bytearray(size)
        self.avail = {}

    def w(self, addr, data):
        end = addr + len(data)
        if end > len(self.b):
            self.b.extend(bytes(end - len(self.b)))
        self.b[addr:end] = data

    def desc(self, q, i, addr, ln, flags, nxt):
        self.w(q * STRIDE + 16 * i, struct.pack("<QIHH", addr, ln, flags, nxt))

    def chain(self, q, first, bufs):
        """bufs: (addr, len, writable); descriptors first, first+1, ..."""
        for k, (addr, ln, wr) in enumerate(bufs):
            flags = (WRITE if wr else 0) | (NEXT if k + 1 < len(bufs) else 0)
            self.desc(q, first + k, addr, ln, flags, (first + k + 1) % QSIZE)
        self.publish(q, first)

    def publish(self, q, head):
        n = self.avail.get(q, 0)
        self.w(q * STRIDE + 0x100 + 4 + 2 * (n % QSIZE), struct.pack("<H", head))
        self.avail[q] = n + 1
        self.w(q * STRIDE + 0x100 + 2, struct.pack("<H", n + 1))

    def bytes(self):
        # Memory past the input is zero anyway.
        return bytes(self.b).rstrip(b"\0")


def device_input(mem, ctl, features=ALL_FEATURES):
    return struct.pack("<QB", features, ctl) + mem.bytes()


def block_seeds():
    def hdr(t, sector):
        return struct.pack("<IIQ", t, 0, sector)

    m = Mem()
    m.w(0x1000, hdr(0, 3))  # read
    m.chain(0, 0, [(0x1000, 16, False), (0x1100, 1024, True), (0x1600, 1, True)])
    m.w(0x2000, hdr(1, 5))  # write
    m.chain(0, 3, [(0x2000, 16, False), (0x2100, 512, False), (0x2400, 1, True)])
    m.w(0x3000, hdr(4, 0))  # flush
    m.chain(0, 6, [(0x3000, 16, False), (0x3100, 1, True)])
    m.w(0x3200, hdr(8, 0))  # get id
    m.chain(0, 8, [(0x3200, 16, False), (0x3300, 20, True), (0x3400, 1, True)])
    put("virtio_block", "read-write-flush-getid", device_input(m, 2))
    put("virtio_block", "read-only-disk", device_input(m, 1))

    m = Mem()  # an indirect table
    m.w(0x1000, hdr(0, 0))
    table = 0x4000
    for i, (addr, ln, fl) in enumerate([(0x1000, 16, NEXT), (0x1100, 512, NEXT | WRITE), (0x1400, 1, WRITE)]):
        m.w(table + 16 * i, struct.pack("<QIHH", addr, ln, fl, i + 1))
    m.desc(0, 0, table, 48, INDIRECT, 0)
    m.publish(0, 0)
    put("virtio_block", "indirect", device_input(m, 0))

    m = Mem()  # a loop, a bad head, past the end of the disk
    m.w(0x1000, hdr(0, 63))
    m.desc(0, 0, 0x1000, 16, NEXT, 1)
    m.desc(0, 1, 0x1100, 1024, NEXT | WRITE, 0)
    m.publish(0, 0)
    m.publish(0, 40)
    m.w(0x2000, hdr(0, 63))
    m.chain(0, 4, [(0x2000, 16, False), (0x2100, 1024, True), (0x2600, 1, True)])
    put("virtio_block", "loop-badhead-beyond-disk", device_input(m, 0))


def net_seeds():
    m = Mem()
    for i in range(4):  # receive buffers on queue 0
        m.chain(0, i, [(0x1000 + i * 0x700, 0x600, True)])
    frame = bytes(12) + bytes.fromhex("ffffffffffff020000000002 0806".replace(" ", "")) + bytes(46)
    m.w(0x4000, frame[:12])
    m.w(0x4100, frame[12:])
    m.chain(1, 0, [(0x4000, 12, False), (0x4100, len(frame) - 12, False)])
    m.chain(1, 2, [(0x4200, 4, False)])  # shorter than a header
    m.w(0x8000, bytes(range(256)) * 4)
    put("virtio_net", "rx-tx", device_input(m, 4))
    put("virtio_net", "rx-oversized-tx-full", device_input(m, 4 | 8 | 0x10 | 0x20))


def vsock_hdr(src_port, dst_port, op, length=0, flags=0, buf_alloc=262144, fwd_cnt=0,
              src_cid=3, dst_cid=2, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, type_, op,
                       flags, buf_alloc, fwd_cnt)


def vsock_seeds():
    m = Mem()
    for i in range(6):  # RX buffers: header and payload in two descriptors
        m.chain(0, 2 * i, [(0x1000 + i * 0x200, 44, True), (0x2000 + i * 0x400, 0x400, True)])
    pkts = [vsock_hdr(100, 1024, 1), vsock_hdr(100, 1024, 5, 5) + b"hello",
            vsock_hdr(100, 1024, 7), vsock_hdr(100, 1024, 6), vsock_hdr(100, 1024, 4, flags=3),
            vsock_hdr(101, 7777, 1), vsock_hdr(100, 1024, 3)]
    for i, p in enumerate(pkts):
        m.w(0x5000 + i * 0x100, p[:44])
        if len(p) > 44:
            m.w(0x5080 + i * 0x100, p[44:])
            m.chain(1, 2 * i, [(0x5000 + i * 0x100, 44, False), (0x5080 + i * 0x100, len(p) - 44, False)])
        else:
            m.chain(1, 2 * i, [(0x5000 + i * 0x100, 44, False)])
    m.chain(2, 0, [(0x7000, 4, True)])
    m.w(0x8000, b"host says hi\n" * 8)
    put("virtio_vsock", "connect-rw-shutdown", device_input(m, 1 | 2 | (2 << 4)))
    put("virtio_vsock", "connect-host-closes", device_input(m, 1 | 4 | (1 << 4)))


def rng_seeds():
    m = Mem()
    m.chain(0, 0, [(0x1000, 64, True)])
    m.chain(0, 1, [(0x2000, 4096, True), (0x4000, 16, True)])
    m.chain(0, 3, [(0x3000, 16, False)])  # read-only buffer
    put("virtio_rng", "two-requests", device_input(m, 1))


def mmio_ops(queues, features_hi=1, features_lo=0):
    ops = bytearray()

    def wr(off, val):
        ops.extend(bytes([0x80 | off // 4, 0]) + struct.pack("<I", val))

    def rd(off, b=0):
        ops.extend(bytes([off // 4, b]))

    for off in (0x0, 0x4, 0x8, 0xc):
        rd(off)
    wr(0x70, 1)
    wr(0x70, 3)
    wr(0x14, 0)
    rd(0x10)
    wr(0x14, 1)
    rd(0x10)
    wr(0x24, 0)
    wr(0x20, features_lo)
    wr(0x24, 1)
    wr(0x20, features_hi)
    wr(0x70, 0xb)
    rd(0x70)
    for q in range(queues):
        wr(0x30, q)
        rd(0x34)
        wr(0x38, QSIZE)
        wr(0x80, q * STRIDE)
        wr(0x84, 0)
        wr(0x90, q * STRIDE + 0x100)
        wr(0x94, 0)
        wr(0xa0, q * STRIDE + 0x200)
        wr(0xa4, 0)
        wr(0x44, 1)
    wr(0x70, 0xf)
    for q in range(queues):
        wr(0x50, q)
    rd(0x60)
    wr(0x64, 1)
    ops.extend(bytes([0x40, 0]))  # config space, 4 bytes at 0x100
    ops.extend(bytes([0x40, 1 | 4 << 2]))  # 1 byte at 0x104
    rd(0xfc)
    return bytes(ops)


def mmio_seeds():
    memories = {}
    m = Mem()
    m.chain(0, 0, [(0x1000, 64, True)])
    memories[0] = (m, 1)
    m = Mem()
    m.w(0x1000, struct.pack("<IIQ", 0, 0, 1))
    m.chain(0, 0, [(0x1000, 16, False), (0x1100, 512, True), (0x1400, 1, True)])
    memories[1] = (m, 1)
    m = Mem()
    m.chain(0, 0, [(0x1000, 0x600, True)])
    m.w(0x4000, bytes(12) + bytes(60))
    m.chain(1, 0, [(0x4000, 72, False)])
    memories[2] = (m, 2)
    m = Mem()
    m.chain(0, 0, [(0x1000, 44, True), (0x2000, 0x400, True)])
    m.w(0x5000, vsock_hdr(100, 1024, 1))
    m.chain(1, 0, [(0x5000, 44, False)])
    m.chain(2, 0, [(0x7000, 4, True)])
    memories[3] = (m, 3)
    names = {0: "rng", 1: "block", 2: "net", 3: "vsock"}
    for which, (mem, queues) in memories.items():
        ops = mmio_ops(queues)
        if which == 0:
            # Then a reset and a second initialisation.
            ops += bytes([0x80 | 0x70 // 4, 0]) + struct.pack("<I", 0) + mmio_ops(queues)
        data = bytes([which]) + struct.pack("<H", len(ops)) + ops + mem.bytes()
        put("virtio_mmio", "init-" + names[which], data)
    # Queue setup out of order and with bad values: the state machine must refuse it.
    bad = bytearray()
    for off, val in ((0x70, 1), (0x70, 0xf), (0x38, 3), (0x44, 1), (0x50, 9), (0x70, 0x80),
                     (0x64, 0xffffffff), (0x70, 0)):
        bad.extend(bytes([0x80 | off // 4, 0]) + struct.pack("<I", val))
    bad.extend(bytes([0x80 | 0x20 // 4, 0x80 | 1 << 4]) + struct.pack("<I", 7))  # unaligned
    bad.extend(bytes([0x80 | 0x40, 3]) + struct.pack("<II", 1, 2))  # 8-byte config write
    put("virtio_mmio", "out-of-order", bytes([2]) + struct.pack("<H", len(bad)) + bytes(bad))


def muxer_packet(src_port, op, payload=b"", f=0, dst=None, flags=0, buf_alloc=262144):
    out = bytearray([0, f])
    if f & 8:
        out += struct.pack("<I", src_port)
    else:
        out += bytes([src_port])
    if f >> 4 & 3 == 2:
        out += bytes([dst or 0])
    elif f >> 4 & 3 == 3:
        out += struct.pack("<I", dst)
    out += bytes([op]) + struct.pack("<III", flags, buf_alloc, 0)
    out += struct.pack("<H", len(payload)) + payload
    return bytes(out)


def muxer_seeds():
    drain = bytes([7]) + struct.pack("<H", 4096)
    s = bytes([0])
    s += muxer_packet(100, 1) + bytes([6, 2]) + drain
    s += muxer_packet(100, 5, b"helloworld") + bytes([6])
    s += bytes([3, 0, 1]) + b"0123456789abcdef" + bytes([6]) + drain
    s += muxer_packet(100, 7) + muxer_packet(100, 6) + drain
    s += muxer_packet(100, 4, flags=3) + drain + bytes([4, 0, 0, 6]) + drain
    put("vsock_muxer", "guest-connects", s)

    s = bytes([0, 5, 0, 6]) + drain  # a host client: CONNECT 1234
    s += muxer_packet(1234, 2, f=8 | 0x20, dst=0) + bytes([6]) + drain
    s += bytes([3, 0, 1]) + b"early bytes 0123" + bytes([6]) + drain
    s += muxer_packet(1234, 5, b"reply", f=8 | 0x20, dst=0) + bytes([6])
    s += muxer_packet(1234, 3, f=8 | 0x20, dst=0) + drain
    put("vsock_muxer", "host-connects", s)

    s = bytes([0])
    s += muxer_packet(100, 1, f=1)[:2] + struct.pack("<Q", 9) + muxer_packet(100, 1)[2:]
    s += muxer_packet(100, 5, b"x" * 100) + muxer_packet(100, 9) + muxer_packet(100, 1, f=0x30, dst=4242)
    s += bytes([5, 1, 12]) + b"CONNECTx 12\n" + bytes([6]) + bytes([7, 0, 0]) + drain
    put("vsock_muxer", "bad-packets", s)


def frame(obj):
    b = json.dumps(obj).encode()
    return struct.pack(">I", len(b)) + b


def agent_seeds():
    hello = frame({"kind": "control", "version": 1})
    reqs = [
        {"id": 1, "method": "ping"},
        {"id": 2, "method": "state", "params": {"container_id": "c1"}},
        {"id": 3, "method": "signal", "params": {"container_id": "c1", "signal": 9, "all": True}},
        {"id": 4, "method": "resize_tty", "params": {"container_id": "c1", "exec_id": "e", "rows": 1, "cols": 2}},
        {"id": 5, "method": "oom_events", "params": {"after": 3, "wait_ms": 10}},
        {"id": 6, "method": "update_resources", "params": {"container_id": "c", "resources": {"cpu": {"shares": 2}}}},
        {"id": 7, "method": "wait", "params": {"container_id": "c1"}},
        {"id": 8, "method": "remove_container", "params": {"container_id": "c1", "force": True}},
        {"id": 9, "method": "nope"},
    ]
    put("agent_server", "control-requests", hello + b"".join(frame(r) for r in reqs))
    put("agent_server", "stream-hello", frame({"kind": "stream", "version": 1, "container_id": "c", "stream": "stdout"}))
    put("agent_server", "create-container", hello + frame({"id": 1, "method": "create_container", "params": {}})
        + frame({"id": 2, "method": "exec", "params": {"container_id": "c", "exec_id": "e"}}))
    put("agent_server", "bad-version", frame({"kind": "control", "version": 2}))
    put("agent_server", "huge-frame", hello + struct.pack(">I", 0xffffffff) + b"{")

    answers = {
        "ping": {"type": "pong"},
        "state": {"type": "state", "value": {"id": "c1", "status": "running", "pid": 4}},
        "processes": {"type": "processes", "value": [1, 2, 3]},
        "process_table": {"type": "process_table", "value": [{"pid": 1, "args": ["sh"]}]},
        "wait": {"type": "exited", "value": {"code": 0}},
        "done": {"type": "done"},
    }
    for n, (name, which) in enumerate((("ping", 0), ("state", 1), ("processes", 2),
                                       ("process_table", 3), ("wait", 6), ("done", 8))):
        ctl = which << 3
        body = frame({"id": 1, "result": answers[name]}) + frame({"id": 2, "result": {"type": "done"}})
        put("agent_client", "answer-" + name, bytes([ctl]) + body)
    put("agent_client", "error-answer", bytes([0]) + frame({"id": 1, "error": {"code": "not_found", "message": "x"}}))
    put("agent_client", "wrong-id", bytes([0]) + frame({"id": 7, "result": {"type": "pong"}}))
    put("agent_client", "proxy", bytes([2]) + frame({"id": 1, "result": {"type": "pong"}}))
    put("agent_client", "own-welcome", bytes([1 | 2 | 4]) + b"OK 5\n"
        + frame({"kind": "welcome", "version": 1, "agent": "a"}) + frame({"id": 1, "result": {"type": "pong"}}))
    put("agent_client", "refused", bytes([1]) + frame({"kind": "refused", "error": {"code": "version_mismatch", "message": "v"}}))


def oci_seeds():
    spec = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": True},
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0, "additionalGids": [1]},
            "args": ["sh"], "env": ["PATH=/bin"], "cwd": "/",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "hostname": "c",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777", "size=65536k"]},
            {"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro", "rprivate"]},
        ],
        "hooks": {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "ipc"}],
            "resources": {"memory": {"limit": 1048576}, "cpu": {"shares": 512, "cpus": "0-1", "quota": 1000, "period": 100000},
                          "pids": {"limit": 10}, "devices": [{"allow": False, "access": "rwm"}]},
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1"},
            "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]},
            "rootfsPropagation": "private",
        },
    }
    put("oci_config", "full", json.dumps(spec, indent=1).encode())
    minimal = {"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}}
    put("oci_config", "minimal", json.dumps(minimal).encode())
    bad = dict(minimal, linux={"namespaces": [{"type": "pid"}, {"type": "pid"}], "sysctl": {"kernel.foo": "1"}})
    put("oci_config", "duplicate-namespace", json.dumps(bad).encode())


def tar_bytes(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            name, kind = e[0], e[1]
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            data = None
            if kind == "file":
                data = e[2]
                ti.size = len(data)
                ti.mode = e[3] if len(e) > 3 else 0o644
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
            elif kind == "sym":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e[2]
            elif kind == "hard":
                ti.type = tarfile.LNKTYPE
                ti.linkname = e[2]
            elif kind == "chr":
                ti.type = tarfile.CHRTYPE
                ti.devmajor, ti.devminor = 1, 3
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return trim_tar(buf.getvalue())


def trim_tar(b):
    """Drops the record padding: the entries, then the two zero blocks that end an archive."""
    end = len(b.rstrip(b"\0"))
    end = (end + 511) // 512 * 512
    return b[:end] + bytes(1024)


def layer_seeds():
    canary = "/tmp/sandbox-fuzz-image_layer/canary"
    base = tar_bytes([("etc", "dir"), ("etc/passwd", "file", b"root:x:0:0::/:/bin/sh\n"),
                      ("bin", "dir"), ("bin/su", "file", b"\x7fELF", 0o4755), ("bin/sh", "hard", "bin/su"),
                      ("lib", "sym", "usr/lib"), ("big", "file", bytes(20000)),
                      ("dev-null", "chr"), ("fifo", "fifo")])
    put("image_layer", "base", bytes([0]) + base)
    l1 = tar_bytes([("link", "sym", canary), ("up", "sym", "../../../.."), ("d", "dir"), ("d/f", "file", b"x")])
    l2 = tar_bytes([("link/.wh.victim", "file", b""), ("link/sub/.wh..wh..opq", "file", b""),
                    ("up/tmp/planted", "file", b"p"), ("link/victim", "file", b"over"),
                    ("d/.wh..wh..opq", "file", b""), (".wh.d", "file", b""), ("hl", "hard", canary + "/victim")])
    put("image_layer", "symlink-then-whiteouts", bytes([1]) + struct.pack("<H", len(l1)) + l1 + l2)
    put("image_layer", "dotdot", bytes([0]) + tar_bytes([("../escape", "file", b"e"), ("a/../../x", "file", b"x")]))
    put("image_layer", "pax-long-names", bytes([0]) + tar_bytes(
        [("x" * 200 + "/y" * 50, "file", b"long"), ("abs/" + canary + "/f", "file", b"a")], fmt=tarfile.PAX_FORMAT))


def sha(b):
    return hashlib.sha256(b).hexdigest()


def outer(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return trim_tar(buf.getvalue())


def import_seeds():
    layer = tar_bytes([("etc", "dir"), ("etc/hostname", "file", b"fuzz\n"), ("bin", "sym", "usr/bin")])
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"], "Env": ["A=b"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(layer)]}}).encode()
    # docker save
    manifest = json.dumps([{"Config": sha(config) + ".json", "RepoTags": ["fuzz:latest"],
                            "Layers": ["l1/layer.tar"]}]).encode()
    put("image_import", "docker-save", outer([("manifest.json", manifest), (sha(config) + ".json", config),
                                             ("l1/layer.tar", layer)]))
    # OCI layout with a gzip layer
    gz = gzip.compress(layer, mtime=0)
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + sha(config), "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + sha(gz), "size": len(gz)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + sha(m), "size": len(m), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}).encode()
    files = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
             ("blobs/sha256/" + sha(m), m), ("blobs/sha256/" + sha(config), config), ("blobs/sha256/" + sha(gz), gz)]
    put("image_import", "oci-layout", outer(files))
    put("image_import", "oci-layout-gzip", gzip.compress(outer(files), mtime=0))
    # a docker manifest naming a missing layer
    put("image_import", "missing-layer", outer([("manifest.json", manifest), (sha(config) + ".json", config)]))


if __name__ == "__main__":
    block_seeds()
    net_seeds()
    vsock_seeds()
    rng_seeds()
    mmio_seeds()
    muxer_seeds()
    agent_seeds()
    oci_seeds()
    layer_seeds()
    import_seeds()
    for t in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, t))
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f)) for f in files)
        print(f"{t}: {len(files)} seeds, {size} bytes")
