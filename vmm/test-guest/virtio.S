/*
 * Virtio-mmio (version 2, modern) drivers of the test guest, included by guest.S.
 *
 * Devices are found through `virtio_mmio.device=<size>@<base>:<irq>` on the command line and
 * driven one at a time by polling the used rings (interrupts stay masked). Each device gets a
 * short exercise and one CHECK/FAIL line, then is reset so that it stops using guest memory.
 *   blk:   reads sectors 0-7 (the test knows the image), writes a pattern to sectors 8-15,
 *          reads it back, flushes, and reads past the end (must fail with an I/O error);
 *          on a read-only disk the write must fail with an I/O error instead
 *   rng:   two 64-byte reads that are neither zero nor equal
 *   net:   sends an ARP request for NET_PEER_IP from NET_OWN_IP and waits for the reply
 *   vsock: accepts a connection from the host and echoes every byte until the host shuts it
 *          down; then, if the command line has `testguest.vsock_connect`, connects to the
 *          host's port VSOCK_CONNECT_PORT and echoes the same way
 */

#define VIRTIO_MAGIC              0x74726976      /* "virt" */
#define VIRTIO_MMIO_MAGIC         0x000
#define VIRTIO_MMIO_VERSION       0x004
#define VIRTIO_MMIO_DEVICE_ID     0x008
#define VIRTIO_MMIO_DEV_FEATURES  0x010
#define VIRTIO_MMIO_DEV_FEAT_SEL  0x014
#define VIRTIO_MMIO_DRV_FEATURES  0x020
#define VIRTIO_MMIO_DRV_FEAT_SEL  0x024
#define VIRTIO_MMIO_QUEUE_SEL     0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM     0x038
#define VIRTIO_MMIO_QUEUE_READY   0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY  0x050
#define VIRTIO_MMIO_INT_STATUS    0x060
#define VIRTIO_MMIO_INT_ACK       0x064
#define VIRTIO_MMIO_STATUS        0x070
#define VIRTIO_MMIO_DESC_LOW      0x080
#define VIRTIO_MMIO_DESC_HIGH     0x084
#define VIRTIO_MMIO_DRIVER_LOW    0x090
#define VIRTIO_MMIO_DRIVER_HIGH   0x094
#define VIRTIO_MMIO_DEVICE_LOW    0x0a0
#define VIRTIO_MMIO_DEVICE_HIGH   0x0a4
#define VIRTIO_MMIO_CONFIG        0x100

#define STATUS_ACKNOWLEDGE        1
#define STATUS_DRIVER             2
#define STATUS_DRIVER_OK          4
#define STATUS_FEATURES_OK        8

#define VIRTIO_F_VERSION_1        (1 << 32)
#define VIRTIO_BLK_F_FLUSH        (1 << 9)
#define VIRTIO_BLK_F_RO           (1 << 5)
#define VIRTIO_NET_F_MAC          (1 << 5)

#define DEVICE_NET                1
#define DEVICE_BLK                2
#define DEVICE_RNG                4
#define DEVICE_VSOCK              19

#define MAX_VIRTIO_DEVICES        8

/* One page per virtqueue: descriptors at 0, driver (avail) ring at 0x100, device (used) ring at
 * 0x200, our own bookkeeping (next used index to consume) at 0x800. */
#define QSIZE                     8
#define VQ_AVAIL                  0x100
#define VQ_USED                   0x200
#define VQ_LAST_USED              0x800
#define DESC_F_NEXT               1
#define DESC_F_WRITE              2
#define VQ_TIMEOUT                10000000

#define BLK_T_IN                  0
#define BLK_T_OUT                 1
#define BLK_T_FLUSH               4
#define BLK_S_IOERR               1
#define BLK_TEST_SECTOR           8
#define BLK_TEST_BYTES            4096

#define NET_HDR_LEN               12              /* virtio_net_hdr with VERSION_1 */
#define NET_OWN_IP                0x0f02000a      /* 10.0.2.15, in memory order */
#define NET_PEER_IP               0x0102000a      /* 10.0.2.1 */
#define NET_MAX_FRAMES            32

#define VSOCK_HDR_LEN             44
#define VSOCK_OP_REQUEST          1
#define VSOCK_OP_RESPONSE         2
#define VSOCK_OP_RST              3
#define VSOCK_OP_SHUTDOWN         4
#define VSOCK_OP_RW               5
#define VSOCK_OP_CREDIT_UPDATE    6
#define VSOCK_OP_CREDIT_REQUEST   7
#define VSOCK_BUF_ALLOC           65536
#define VSOCK_MAX_PACKETS         256
#define VSOCK_HOST_CID            2
#define VSOCK_CONNECT_PORT        5000            /* the host listens on <socket>_5000 */
#define VSOCK_LOCAL_PORT          49152

.section .text
.code64

/* ------------------------------------------------------------------------------------------ */
/* Finding the devices on the command line. */

/* Parses a hexadecimal number (optional 0x) at rsi into rax; rsi ends past it. */
parse_hex:
    push %rdx
    xor %eax, %eax
    cmpb $'0', (%rsi)
    jne 1f
    cmpb $'x', 1(%rsi)
    jne 1f
    add $2, %rsi
1:  movzbl (%rsi), %edx
    sub $'0', %edx
    cmp $10, %edx
    jb 2f
    movzbl (%rsi), %edx
    or $0x20, %edx                      /* lower case */
    sub $'a', %edx
    cmp $6, %edx
    jae 3f
    add $10, %edx
2:  shl $4, %rax
    or %rdx, %rax
    inc %rsi
    jmp 1b
3:  pop %rdx
    ret

find_virtio_devices:
    push %rax
    push %rbx
    push %rcx
    push %rdi
    push %rsi
    mov cmdline_addr(%rip), %rsi
    mov cmdline_len(%rip), %rcx
    test %rsi, %rsi
    jz 9f
1:  cmp $19, %rcx                       /* strlen("virtio_mmio.device=") */
    jb 9f
    lea virtio_key(%rip), %rdi
    xor %ebx, %ebx
2:  movzbl (%rsi,%rbx), %eax
    cmp (%rdi,%rbx), %al
    jne 5f
    inc %ebx
    cmp $19, %ebx
    jb 2b
    /* Found: the base address follows the '@'. */
    lea 19(%rsi), %rdi
3:  movzbl (%rdi), %eax
    cmp $'@', %al
    je 4f
    cmp $' ', %al
    jbe 5f
    inc %rdi
    jmp 3b
4:  push %rsi
    lea 1(%rdi), %rsi
    call parse_hex
    pop %rsi
    mov virtio_count(%rip), %ebx
    cmp $MAX_VIRTIO_DEVICES, %ebx
    jae 9f
    lea virtio_bases(%rip), %rdi
    mov %rax, (%rdi,%rbx,8)
    incl virtio_count(%rip)
5:  inc %rsi
    dec %rcx
    jmp 1b
9:  pop %rsi
    pop %rdi
    pop %rcx
    pop %rbx
    pop %rax
    ret

check_virtio:
    call find_virtio_devices
    mov virtio_count(%rip), %eax
    PRINTHEX "VIRTIO devices=", %rax
    PRINT "\n"
    xor %r13d, %r13d
1:  cmp virtio_count(%rip), %r13d
    jae 9f
    lea virtio_bases(%rip), %rax
    mov (%rax,%r13,8), %r12
    mov $MAPPED_LIMIT, %rax
    cmp %rax, %r12
    jae 8f
    mov VIRTIO_MMIO_MAGIC(%r12), %eax
    mov VIRTIO_MMIO_VERSION(%r12), %ebx
    mov VIRTIO_MMIO_DEVICE_ID(%r12), %ecx
    PRINTHEX "VIRTIO addr=", %r12
    PRINTHEX " magic=", %rax
    PRINTHEX " version=", %rbx
    PRINTHEX " device_id=", %rcx
    PRINT "\n"
    cmp $VIRTIO_MAGIC, %eax
    jne 7f
    cmp $2, %ebx
    jne 7f
    push %r13
    cmp $DEVICE_BLK, %ecx
    jne 2f
    call blk_test
2:  cmp $DEVICE_RNG, %ecx
    jne 3f
    call rng_test
3:  cmp $DEVICE_NET, %ecx
    jne 4f
    call net_test
4:  cmp $DEVICE_VSOCK, %ecx
    jne 5f
    call vsock_test
5:  pop %r13
    movl $0, VIRTIO_MMIO_STATUS(%r12)   /* reset: the device lets go of our queues */
    jmp 6f
7:  PRINTHEX "FAIL virtio not_a_modern_device addr=", %r12
    PRINT "\n"
    jmp 6f
8:  PRINTHEX "FAIL virtio beyond_identity_map addr=", %r12
    PRINT "\n"
6:  inc %r13d
    jmp 1b
9:  ret

/* ------------------------------------------------------------------------------------------ */
/* The generic part: status, features, queues. The device is at r12 throughout. */

/* Resets the device and negotiates the features in rax (VERSION_1 required). Returns the
 * negotiated set in rax; CF set (and a FAIL line printed) on failure. */
virtio_init:
    push %rbx
    push %rdx
    mov %rax, %rbx
    movl $0, VIRTIO_MMIO_STATUS(%r12)
    cmpl $0, VIRTIO_MMIO_STATUS(%r12)
    jne 7f
    movl $STATUS_ACKNOWLEDGE, VIRTIO_MMIO_STATUS(%r12)
    movl $(STATUS_ACKNOWLEDGE | STATUS_DRIVER), VIRTIO_MMIO_STATUS(%r12)
    movl $1, VIRTIO_MMIO_DEV_FEAT_SEL(%r12)
    mov VIRTIO_MMIO_DEV_FEATURES(%r12), %edx
    shl $32, %rdx
    movl $0, VIRTIO_MMIO_DEV_FEAT_SEL(%r12)
    mov VIRTIO_MMIO_DEV_FEATURES(%r12), %eax
    or %rdx, %rax
    PRINTHEX "VIRTIO features offered=", %rax
    and %rbx, %rax
    PRINTHEX " negotiated=", %rax
    PRINT "\n"
    mov %rax, %rdx
    shr $32, %rdx
    test $1, %edx                       /* VIRTIO_F_VERSION_1 */
    jz 8f
    movl $1, VIRTIO_MMIO_DRV_FEAT_SEL(%r12)
    mov %edx, VIRTIO_MMIO_DRV_FEATURES(%r12)
    movl $0, VIRTIO_MMIO_DRV_FEAT_SEL(%r12)
    mov %eax, VIRTIO_MMIO_DRV_FEATURES(%r12)
    movl $(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK), VIRTIO_MMIO_STATUS(%r12)
    mov VIRTIO_MMIO_STATUS(%r12), %edx
    test $STATUS_FEATURES_OK, %edx
    jz 9f
    clc
    jmp 10f
7:  PRINT "FAIL virtio reset_ignored\n"
    stc
    jmp 10f
8:  PRINT "FAIL virtio no_version_1\n"
    stc
    jmp 10f
9:  PRINT "FAIL virtio features_not_accepted\n"
    stc
10: pop %rdx
    pop %rbx
    ret

/* Sets up queue ecx with its rings in the page at rdi. CF set on failure. */
virtq_setup:
    push %rax
    push %rcx
    push %rdi
    push %rcx
    xor %eax, %eax
    mov $512, %ecx
    rep stosq
    pop %rcx
    mov (%rsp), %rdi
    mov %ecx, VIRTIO_MMIO_QUEUE_SEL(%r12)
    cmpl $0, VIRTIO_MMIO_QUEUE_READY(%r12)
    jne 8f
    mov VIRTIO_MMIO_QUEUE_NUM_MAX(%r12), %eax
    cmp $QSIZE, %eax
    jb 8f
    movl $QSIZE, VIRTIO_MMIO_QUEUE_NUM(%r12)
    mov %rdi, %rax
    mov %eax, VIRTIO_MMIO_DESC_LOW(%r12)
    shr $32, %rax
    mov %eax, VIRTIO_MMIO_DESC_HIGH(%r12)
    lea VQ_AVAIL(%rdi), %rax
    mov %eax, VIRTIO_MMIO_DRIVER_LOW(%r12)
    shr $32, %rax
    mov %eax, VIRTIO_MMIO_DRIVER_HIGH(%r12)
    lea VQ_USED(%rdi), %rax
    mov %eax, VIRTIO_MMIO_DEVICE_LOW(%r12)
    shr $32, %rax
    mov %eax, VIRTIO_MMIO_DEVICE_HIGH(%r12)
    movl $1, VIRTIO_MMIO_QUEUE_READY(%r12)
    clc
    jmp 9f
8:  PRINTHEX "FAIL virtio queue_unusable index=", %rcx
    PRINT "\n"
    stc
9:  pop %rdi
    pop %rcx
    pop %rax
    ret

/* Sets DRIVER_OK. CF set if the device refused. */
virtio_driver_ok:
    push %rax
    mov VIRTIO_MMIO_STATUS(%r12), %eax
    or $STATUS_DRIVER_OK, %eax
    mov %eax, VIRTIO_MMIO_STATUS(%r12)
    mov VIRTIO_MMIO_STATUS(%r12), %eax
    test $0x80, %eax                    /* FAILED */
    jnz 8f
    test $STATUS_DRIVER_OK, %eax
    jz 8f
    clc
    pop %rax
    ret
8:  PRINTHEX "FAIL virtio driver_ok_refused status=", %rax
    PRINT "\n"
    stc
    pop %rax
    ret

/* Makes a descriptor chain from the edx segments at rsi ({u64 addr, u32 len, u32 flags}
 * each), offers it on queue ecx (rings at rdi) and notifies the device. */
virtq_submit:
    push %rax
    push %rbx
    push %r8
    push %r9
    xor %r8d, %r8d
1:  mov %r8, %r9
    shl $4, %r9
    mov %r8, %rbx
    shl $4, %rbx
    mov (%rsi,%rbx), %rax
    mov %rax, (%rdi,%r9)                /* addr */
    mov 8(%rsi,%rbx), %eax
    mov %eax, 8(%rdi,%r9)               /* len */
    mov 12(%rsi,%rbx), %eax
    lea 1(%r8), %rbx
    cmp %edx, %ebx
    jae 2f
    or $DESC_F_NEXT, %eax
2:  mov %ax, 12(%rdi,%r9)               /* flags */
    mov %bx, 14(%rdi,%r9)               /* next */
    inc %r8d
    cmp %edx, %r8d
    jb 1b
    movzwl VQ_AVAIL+2(%rdi), %eax       /* avail idx */
    mov %eax, %ebx
    and $(QSIZE - 1), %ebx
    movw $0, VQ_AVAIL+4(%rdi,%rbx,2)    /* the chain starts at descriptor 0 */
    inc %eax
    mov %ax, VQ_AVAIL+2(%rdi)           /* x86 keeps the stores above ordered before this */
    mov %ecx, VIRTIO_MMIO_QUEUE_NOTIFY(%r12)
    pop %r9
    pop %r8
    pop %rbx
    pop %rax
    ret

/* Waits for the device to use the next chain of the queue whose rings are at rdi. Returns
 * the length the device wrote in eax; CF set on timeout. */
virtq_wait:
    push %rcx
    push %rdx
    movzwl VQ_LAST_USED(%rdi), %edx
    mov $VQ_TIMEOUT, %ecx
1:  movzwl VQ_USED+2(%rdi), %eax
    cmp %dx, %ax
    jne 2f
    pause
    dec %ecx
    jnz 1b
    stc
    jmp 9f
2:  mov %edx, %eax
    and $(QSIZE - 1), %eax
    mov VQ_USED+4+4(%rdi,%rax,8), %eax  /* used element: id, len */
    inc %edx
    mov %dx, VQ_LAST_USED(%rdi)
    mov VIRTIO_MMIO_INT_STATUS(%r12), %edx
    mov %edx, VIRTIO_MMIO_INT_ACK(%r12)
    clc
9:  pop %rdx
    pop %rcx
    ret

/* FNV-1a over rcx bytes at rsi into eax. */
fnv1a:
    push %rbx
    push %rcx
    push %rsi
    mov $0x811c9dc5, %eax
    test %rcx, %rcx
    jz 2f
1:  movzbl (%rsi), %ebx
    xor %ebx, %eax
    imul $0x01000193, %eax, %eax
    inc %rsi
    dec %rcx
    jnz 1b
2:  pop %rsi
    pop %rcx
    pop %rbx
    ret

/* Fills rcx bytes at rdi with zeroes. */
zero_bytes:
    push %rax
    push %rcx
    push %rdi
    xor %eax, %eax
    rep stosb
    pop %rdi
    pop %rcx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* virtio-blk */

/* One request: type eax, sector rbx, data at rsi, ecx bytes (0: none). Returns the status
 * byte in eax; CF set on timeout. */
blk_request:
    push %rdx
    push %rdi
    push %rsi
    lea blk_header(%rip), %rdi
    mov %eax, (%rdi)
    movl $0, 4(%rdi)
    mov %rbx, 8(%rdi)
    movb $0xff, blk_status(%rip)
    lea blk_segments(%rip), %rdx
    mov %rdi, (%rdx)
    movl $16, 8(%rdx)
    movl $0, 12(%rdx)
    add $16, %rdx
    test %ecx, %ecx
    jz 2f
    mov %rsi, (%rdx)
    mov %ecx, 8(%rdx)
    movl $0, 12(%rdx)
    cmp $BLK_T_IN, %eax
    jne 1f
    movl $DESC_F_WRITE, 12(%rdx)
1:  add $16, %rdx
2:  lea blk_status(%rip), %rax
    mov %rax, (%rdx)
    movl $1, 8(%rdx)
    movl $DESC_F_WRITE, 12(%rdx)
    add $16, %rdx
    lea blk_segments(%rip), %rsi
    sub %rsi, %rdx
    shr $4, %edx                        /* segment count */
    push %rcx
    xor %ecx, %ecx
    lea vq_page0(%rip), %rdi
    call virtq_submit
    call virtq_wait
    pop %rcx
    jc 9f
    movzbl blk_status(%rip), %eax
    clc
9:  pop %rsi
    pop %rdi
    pop %rdx
    ret

blk_test:
    push %rax
    push %rbx
    push %rcx
    push %rsi
    push %rdi
    push %r13
    push %r14
    mov $(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_RO), %rax
    call virtio_init
    jc 99f
    mov %rax, %r14                      /* negotiated features */
    mov VIRTIO_MMIO_CONFIG+4(%r12), %eax
    shl $32, %rax
    mov VIRTIO_MMIO_CONFIG(%r12), %ecx
    or %rcx, %rax
    mov %rax, %r13                      /* capacity in sectors */
    xor %ecx, %ecx
    lea vq_page0(%rip), %rdi
    call virtq_setup
    jc 99f
    call virtio_driver_ok
    jc 99f
    cmp $(BLK_TEST_SECTOR + BLK_TEST_BYTES / 512), %r13
    jb 90f

    /* Sectors 0-7 as the image holds them. */
    lea blk_buffer_a(%rip), %rsi
    mov $BLK_TEST_BYTES, %ecx
    mov %rsi, %rdi
    call zero_bytes
    mov $BLK_T_IN, %eax
    xor %ebx, %ebx
    call blk_request
    jc 91f
    test %eax, %eax
    jnz 92f
    call fnv1a
    PRINTHEX "BLK capacity=", %r13
    PRINTHEX " read0_fnv1a=", %rax
    PRINT "\n"

    /* A pattern written to sectors 8-15 and read back; a read-only disk must refuse it. */
    lea blk_buffer_b(%rip), %rdi
    xor %ecx, %ecx
1:  imul $13, %ecx, %eax
    add $0x5b, %eax
    mov %al, (%rdi,%rcx)
    inc %ecx
    cmp $BLK_TEST_BYTES, %ecx
    jb 1b
    mov %rdi, %rsi
    mov $BLK_T_OUT, %eax
    mov $BLK_TEST_SECTOR, %ebx
    call blk_request
    jc 91f
    test $VIRTIO_BLK_F_RO, %r14d
    jz 4f
    cmp $BLK_S_IOERR, %eax
    jne 95f
    PRINTHEX "CHECK blk_readonly ok capacity=", %r13
    PRINTHEX " write_status=", %rax
    PRINT "\n"
    jmp 99f
4:  test %eax, %eax
    jnz 92f
    lea blk_buffer_a(%rip), %rsi
    mov %rsi, %rdi
    call zero_bytes
    mov $BLK_T_IN, %eax
    call blk_request
    jc 91f
    test %eax, %eax
    jnz 92f
    lea blk_buffer_a(%rip), %rsi
    lea blk_buffer_b(%rip), %rdi
    xor %ecx, %ecx
2:  mov (%rsi,%rcx,8), %rax
    cmp (%rdi,%rcx,8), %rax
    jne 93f
    inc %ecx
    cmp $(BLK_TEST_BYTES / 8), %ecx
    jb 2b

    /* Flush, when the device offers it. */
    xor %r9d, %r9d
    test $VIRTIO_BLK_F_FLUSH, %r14d
    jz 3f
    mov $BLK_T_FLUSH, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    call blk_request
    jc 91f
    test %eax, %eax
    jnz 92f
    mov $1, %r9d
3:  PRINTHEX "CHECK blk ok capacity=", %r13
    PRINTHEX " written_sector=", $BLK_TEST_SECTOR
    PRINTHEX " flushed=", %r9
    PRINT "\n"

    /* A read that ends past the last sector must fail with an I/O error, not succeed. */
    lea blk_buffer_a(%rip), %rsi
    mov $1024, %ecx
    mov $BLK_T_IN, %eax
    lea -1(%r13), %rbx
    call blk_request
    jc 91f
    cmp $BLK_S_IOERR, %eax
    jne 94f
    PRINTHEX "CHECK blk_bounds ok status=", %rax
    PRINT "\n"
    jmp 99f

90: PRINTHEX "FAIL blk too_small capacity=", %r13
    PRINT "\n"
    jmp 99f
91: PRINT "FAIL blk timeout\n"
    jmp 99f
92: PRINTHEX "FAIL blk request_status=", %rax
    PRINTHEX " sector=", %rbx
    PRINT "\n"
    jmp 99f
93: shl $3, %ecx
    PRINTHEX "FAIL blk readback_mismatch offset=", %rcx
    PRINT "\n"
    jmp 99f
94: PRINTHEX "FAIL blk_bounds status=", %rax
    PRINT "\n"
    jmp 99f
95: PRINTHEX "FAIL blk_readonly write_status=", %rax
    PRINT "\n"
99: pop %r14
    pop %r13
    pop %rdi
    pop %rsi
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* virtio-rng */

/* Reads into rng_buffer; returns the length in eax, CF on timeout. */
rng_read:
    push %rcx
    push %rdx
    push %rdi
    push %rsi
    lea rng_buffer(%rip), %rdi
    mov $64, %ecx
    call zero_bytes
    lea rng_segment(%rip), %rsi
    mov %rdi, (%rsi)
    movl $64, 8(%rsi)
    movl $DESC_F_WRITE, 12(%rsi)
    xor %ecx, %ecx
    mov $1, %edx
    lea vq_page0(%rip), %rdi
    call virtq_submit
    call virtq_wait
    pop %rsi
    pop %rdi
    pop %rdx
    pop %rcx
    ret

rng_test:
    push %rax
    push %rcx
    push %rsi
    push %rdi
    push %r13
    push %r14
    mov $VIRTIO_F_VERSION_1, %rax
    call virtio_init
    jc 99f
    xor %ecx, %ecx
    lea vq_page0(%rip), %rdi
    call virtq_setup
    jc 99f
    call virtio_driver_ok
    jc 99f
    call rng_read
    jc 91f
    mov %rax, %r13
    test %eax, %eax
    jz 92f
    cmp $64, %eax
    ja 92f
    lea rng_buffer(%rip), %rsi
    mov $8, %ecx
1:  cmpq $0, -8(%rsi,%rcx,8)
    jne 2f
    dec %ecx
    jnz 1b
    PRINT "FAIL rng all_zero\n"
    jmp 99f
2:  mov $64, %ecx
    call fnv1a
    mov %rax, %r14
    call rng_read
    jc 91f
    mov $64, %ecx
    call fnv1a
    cmp %eax, %r14d
    je 93f
    PRINTHEX "CHECK rng ok bytes=", %r13
    PRINTHEX " first_fnv1a=", %r14
    PRINTHEX " second_fnv1a=", %rax
    PRINT "\n"
    jmp 99f
91: PRINT "FAIL rng timeout\n"
    jmp 99f
92: PRINTHEX "FAIL rng bad_length=", %rax
    PRINT "\n"
    jmp 99f
93: PRINT "FAIL rng same_bytes_twice\n"
99: pop %r14
    pop %r13
    pop %rdi
    pop %rsi
    pop %rcx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* virtio-net */

/* Offers net_rx_buffer on the receive queue. */
net_post_rx:
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    lea net_rx_segment(%rip), %rsi
    lea net_rx_buffer(%rip), %rdi
    mov %rdi, (%rsi)
    movl $2048, 8(%rsi)
    movl $DESC_F_WRITE, 12(%rsi)
    xor %ecx, %ecx
    mov $1, %edx
    lea vq_page0(%rip), %rdi
    call virtq_submit
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    ret

/* Reads the 6-byte big-endian value at rsi into rax. */
load_mac:
    push %rcx
    push %rdx
    xor %eax, %eax
    xor %ecx, %ecx
1:  shl $8, %rax
    movzbl (%rsi,%rcx), %edx
    or %rdx, %rax
    inc %ecx
    cmp $6, %ecx
    jb 1b
    pop %rdx
    pop %rcx
    ret

net_test:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r13
    push %r14
    mov $(VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC), %rax
    call virtio_init
    jc 99f
    test $VIRTIO_NET_F_MAC, %eax
    jz 90f
    /* Our MAC, into the ARP request (Ethernet source and sender hardware address). */
    lea net_frame(%rip), %rdi
    xor %ecx, %ecx
1:  movzbl VIRTIO_MMIO_CONFIG(%r12,%rcx), %eax
    mov %al, NET_HDR_LEN+6(%rdi,%rcx)
    mov %al, NET_HDR_LEN+22(%rdi,%rcx)
    inc %ecx
    cmp $6, %ecx
    jb 1b
    lea NET_HDR_LEN+6(%rdi), %rsi
    call load_mac
    mov %rax, %r13

    xor %ecx, %ecx
    lea vq_page0(%rip), %rdi
    call virtq_setup
    jc 99f
    mov $1, %ecx
    lea vq_page1(%rip), %rdi
    call virtq_setup
    jc 99f
    call virtio_driver_ok
    jc 99f
    PRINTHEX "NET mac=", %r13
    PRINT "\n"

    call net_post_rx
    lea net_tx_segment(%rip), %rsi
    lea net_frame(%rip), %rax
    mov %rax, (%rsi)
    movl $(NET_HDR_LEN + 60), 8(%rsi)
    movl $0, 12(%rsi)
    mov $1, %ecx
    mov $1, %edx
    lea vq_page1(%rip), %rdi
    call virtq_submit
    call virtq_wait
    jc 91f

    /* Frames other than our answer (the peer's own chatter) are skipped. */
    xor %r14d, %r14d
2:  cmp $NET_MAX_FRAMES, %r14d
    jae 92f
    lea vq_page0(%rip), %rdi
    call virtq_wait
    jc 93f
    inc %r14d
    lea net_rx_buffer+NET_HDR_LEN(%rip), %rsi
    cmp $(NET_HDR_LEN + 42), %eax
    jb 3f
    cmpw $0x0608, 12(%rsi)              /* ARP */
    jne 3f
    cmpw $0x0200, 20(%rsi)              /* reply */
    jne 3f
    cmpl $NET_PEER_IP, 28(%rsi)
    jne 3f
    cmpl $NET_OWN_IP, 38(%rsi)
    jne 3f
    push %rsi
    add $32, %rsi                       /* target hardware address: must be ours */
    call load_mac
    pop %rsi
    cmp %rax, %r13
    jne 3f
    add $22, %rsi                       /* sender hardware address: the peer */
    call load_mac
    PRINTHEX "CHECK net ok mac=", %r13
    PRINTHEX " peer_mac=", %rax
    PRINTHEX " frames_received=", %r14
    PRINT "\n"
    jmp 99f
3:  call net_post_rx
    jmp 2b

90: PRINT "FAIL net no_mac_feature\n"
    jmp 99f
91: PRINT "FAIL net tx_timeout\n"
    jmp 99f
92: PRINT "FAIL net no_arp_reply_among_frames\n"
    jmp 99f
93: PRINTHEX "FAIL net rx_timeout frames_received=", %r14
    PRINT "\n"
99: pop %r14
    pop %r13
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* virtio-vsock */

vsock_post_rx:
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    lea vsock_rx_segments(%rip), %rsi
    lea vsock_rx_header(%rip), %rdi
    mov %rdi, (%rsi)
    movl $VSOCK_HDR_LEN, 8(%rsi)
    movl $DESC_F_WRITE, 12(%rsi)
    lea vsock_rx_data(%rip), %rdi
    mov %rdi, 16(%rsi)
    movl $4096, 24(%rsi)
    movl $DESC_F_WRITE, 28(%rsi)
    xor %ecx, %ecx
    mov $2, %edx
    lea vq_page0(%rip), %rdi
    call virtq_submit
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    ret

/* Answers the packet in vsock_rx_header with operation eax, flags ebx and the ecx payload
 * bytes of vsock_rx_data. CF set on timeout. */
vsock_reply:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    lea vsock_tx_header(%rip), %rdi
    lea vsock_rx_header(%rip), %rsi
    mov vsock_cid(%rip), %rdx
    mov %rdx, 0(%rdi)                   /* src_cid */
    mov 0(%rsi), %rdx
    mov %rdx, 8(%rdi)                   /* dst_cid: the sender */
    mov 20(%rsi), %edx
    mov %edx, 16(%rdi)                  /* src_port: the port it addressed */
    mov 16(%rsi), %edx
    mov %edx, 20(%rdi)                  /* dst_port: its port */
    mov %ecx, 24(%rdi)                  /* len */
    movw $1, 28(%rdi)                   /* type: stream */
    mov %ax, 30(%rdi)                   /* op */
    mov %ebx, 32(%rdi)                  /* flags */
    movl $VSOCK_BUF_ALLOC, 36(%rdi)
    mov vsock_fwd_cnt(%rip), %edx
    mov %edx, 40(%rdi)
    lea vsock_tx_segments(%rip), %rsi
    mov %rdi, (%rsi)
    movl $VSOCK_HDR_LEN, 8(%rsi)
    movl $0, 12(%rsi)
    mov $1, %edx
    test %ecx, %ecx
    jz 1f
    lea vsock_rx_data(%rip), %rax
    mov %rax, 16(%rsi)
    mov %ecx, 24(%rsi)
    movl $0, 28(%rsi)
    mov $2, %edx
1:  mov $1, %ecx
    lea vq_page1(%rip), %rdi
    call virtq_submit
    call virtq_wait
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    ret

vsock_test:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r13
    push %r14
    mov $VIRTIO_F_VERSION_1, %rax
    call virtio_init
    jc 99f
    mov VIRTIO_MMIO_CONFIG+4(%r12), %eax
    shl $32, %rax
    mov VIRTIO_MMIO_CONFIG(%r12), %ecx
    or %rcx, %rax
    mov %rax, vsock_cid(%rip)
    xor %ecx, %ecx
    lea vq_page0(%rip), %rdi
    call virtq_setup
    jc 99f
    mov $1, %ecx
    lea vq_page1(%rip), %rdi
    call virtq_setup
    jc 99f
    mov $2, %ecx
    lea vq_page2(%rip), %rdi
    call virtq_setup
    jc 99f
    call virtio_driver_ok
    jc 99f
    movl $0, vsock_fwd_cnt(%rip)
    call vsock_post_rx
    mov vsock_cid(%rip), %rax
    PRINTHEX "VSOCK cid=", %rax
    PRINT " echoing\n"

    /* A connection from the host. */
    call vsock_serve
    jc 99f
    PRINTHEX "CHECK vsock ok cid=", vsock_cid(%rip)
    PRINTHEX " echoed_bytes=", %r13
    PRINTHEX " packets=", %r14
    PRINT "\n"

    /* A connection from the guest, when the command line asks for one. */
    lea vsock_connect_key(%rip), %rdi
    mov $(vsock_connect_key_end - vsock_connect_key), %edx
    call cmdline_contains
    jc 99f
    /* Address the request as if answering a packet from the host's port. */
    lea vsock_rx_header(%rip), %rsi
    movq $VSOCK_HOST_CID, 0(%rsi)
    movl $VSOCK_CONNECT_PORT, 16(%rsi)
    movl $VSOCK_LOCAL_PORT, 20(%rsi)
    movl $VSOCK_LOCAL_PORT, vsock_serve_port(%rip)
    movl $0, vsock_fwd_cnt(%rip)
    mov $VSOCK_OP_REQUEST, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    call vsock_reply
    jc 91f
    call vsock_post_rx
    call vsock_serve
    jc 99f
    PRINTHEX "CHECK vsock_connect ok port=", $VSOCK_CONNECT_PORT
    PRINTHEX " echoed_bytes=", %r13
    PRINTHEX " packets=", %r14
    PRINT "\n"
    jmp 99f
91: PRINT "FAIL vsock_connect request_timeout\n"
99: pop %r14
    pop %r13
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* Serves one connection (receive buffer already offered): answers a request, echoes every
 * byte, ends when the peer shuts down or resets. Packets for other local ports than
 * vsock_serve_port (when set) are dropped. Returns the bytes echoed in r13 and the
 * packets received in r14; CF set (and a FAIL line printed) on failure. */
vsock_serve:
    push %rax
    push %rbx
    push %rcx
    push %rsi
    push %rdi
    xor %r13d, %r13d
    xor %r14d, %r14d
1:  cmp $VSOCK_MAX_PACKETS, %r14d
    jae 92f
    lea vq_page0(%rip), %rdi
    call virtq_wait
    jc 91f
    inc %r14d
    lea vsock_rx_header(%rip), %rsi
    mov vsock_serve_port(%rip), %eax
    test %eax, %eax
    jz 3f
    cmp 20(%rsi), %eax                  /* a late packet of an earlier connection */
    jne 2f
3:  movzwl 30(%rsi), %eax
    cmp $VSOCK_OP_REQUEST, %eax
    je 10f
    cmp $VSOCK_OP_RW, %eax
    je 11f
    cmp $VSOCK_OP_SHUTDOWN, %eax
    je 12f
    cmp $VSOCK_OP_RST, %eax
    je 20f
    cmp $VSOCK_OP_CREDIT_REQUEST, %eax
    je 14f
    jmp 2f                              /* responses and credit updates need no answer */
10: mov 20(%rsi), %eax
    mov 16(%rsi), %ebx
    PRINTHEX "VSOCK connection port=", %rax
    PRINTHEX " peer_cid=", 0(%rsi)
    PRINTHEX " peer_port=", %rbx
    PRINT "\n"
    mov $VSOCK_OP_RESPONSE, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    call vsock_reply
    jc 91f
    jmp 2f
11: mov 24(%rsi), %ecx
    cmp $4096, %ecx
    ja 93f
    add %ecx, vsock_fwd_cnt(%rip)
    mov $VSOCK_OP_RW, %eax
    xor %ebx, %ebx
    call vsock_reply
    jc 91f
    add %rcx, %r13
    jmp 2f
12: mov $VSOCK_OP_RST, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    call vsock_reply
    jc 91f
    jmp 20f
14: mov $VSOCK_OP_CREDIT_UPDATE, %eax
    xor %ebx, %ebx
    xor %ecx, %ecx
    call vsock_reply
    jc 91f
2:  call vsock_post_rx
    jmp 1b

20: test %r13, %r13
    jz 94f
    clc
    jmp 99f
91: PRINTHEX "FAIL vsock timeout packets=", %r14
    PRINT "\n"
    stc
    jmp 99f
92: PRINT "FAIL vsock too_many_packets\n"
    stc
    jmp 99f
93: PRINTHEX "FAIL vsock oversized_payload len=", %rcx
    PRINT "\n"
    stc
    jmp 99f
94: PRINT "FAIL vsock closed_without_data\n"
    stc
99: pop %rdi
    pop %rsi
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* CF clear if the command line contains the edx bytes at rdi. */
cmdline_contains:
    push %rax
    push %rbx
    push %rcx
    push %rsi
    mov cmdline_addr(%rip), %rsi
    mov cmdline_len(%rip), %rcx
    test %rsi, %rsi
    jz 8f
1:  cmp %rdx, %rcx
    jb 8f
    xor %ebx, %ebx
2:  cmp %edx, %ebx
    jae 9f
    movzbl (%rsi,%rbx), %eax
    cmp (%rdi,%rbx), %al
    jne 3f
    inc %ebx
    jmp 2b
3:  inc %rsi
    dec %rcx
    jmp 1b
8:  stc
    jmp 10f
9:  clc
10: pop %rsi
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
.section .rodata
virtio_key:
    .ascii "virtio_mmio.device="
vsock_connect_key:
    .ascii "testguest.vsock_connect"
vsock_connect_key_end:

.section .data
.balign 8
virtio_count:       .long 0
.balign 8
virtio_bases:       .fill MAX_VIRTIO_DEVICES, 8, 0
cmdline_addr:       .quad 0
cmdline_len:        .quad 0
vsock_cid:          .quad 0
vsock_fwd_cnt:      .long 0
vsock_serve_port:   .long 0             /* serve only this local port; 0: any */
/* virtio_net_hdr (zero: no offloads) and an ARP request who-has NET_PEER_IP tell NET_OWN_IP;
 * the two MAC fields are filled in from the device's config. */
.balign 8
net_frame:
    .fill NET_HDR_LEN, 1, 0
    .byte 0xff, 0xff, 0xff, 0xff, 0xff, 0xff    /* destination: broadcast */
    .fill 6, 1, 0                               /* source */
    .byte 0x08, 0x06                            /* ARP */
    .byte 0x00, 0x01, 0x08, 0x00, 6, 4          /* Ethernet, IPv4 */
    .byte 0x00, 0x01                            /* request */
    .fill 6, 1, 0                               /* sender hardware address */
    .byte 10, 0, 2, 15                          /* sender IP */
    .fill 6, 1, 0                               /* target hardware address */
    .byte 10, 0, 2, 1                           /* target IP */
    .fill 18, 1, 0                              /* padding to the 60-byte minimum */

.section .bss
.balign 4096
vq_page0:           .skip 4096
vq_page1:           .skip 4096
vq_page2:           .skip 4096
blk_buffer_a:       .skip BLK_TEST_BYTES
blk_buffer_b:       .skip BLK_TEST_BYTES
vsock_rx_data:      .skip 4096
net_rx_buffer:      .skip 2048
.balign 16
blk_header:         .skip 16
blk_segments:       .skip 3 * 16
rng_segment:        .skip 16
net_rx_segment:     .skip 16
net_tx_segment:     .skip 16
vsock_rx_segments:  .skip 2 * 16
vsock_tx_segments:  .skip 2 * 16
vsock_rx_header:    .skip 64
vsock_tx_header:    .skip 64
rng_buffer:         .skip 64
blk_status:         .skip 8
