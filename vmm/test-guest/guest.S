/*
 * The test guest: a tiny x86_64 kernel that is booted exactly as Linux is (64-bit entry,
 * RSI = physical address of boot_params) and checks what the VMM set up.
 *
 * It reports on the 16550 at 0x3f8, one line per fact, so that a test can parse them:
 *   CHECK <what> ok <details>     a check passed
 *   FAIL <what> <details>         a check failed (the guest carries on with the next check)
 *   E820 / CMDLINE / INITRD / MPTABLE / MPCPU / CPU lines carry the raw facts
 *   TESTGUEST done                the last line before the i8042 reset
 * Numbers are hexadecimal with a 0x prefix.
 *
 * Guest kernel mode may be emulated instruction by instruction by the host, so the code stays
 * small and uses only plain integer instructions (no SSE, no int3, no popcnt).
 */

#define COM1                0x3f8
#define I8042_COMMAND       0x64
#define I8042_RESET         0xfe
#define BOOT_COMPLETE_PORT  0x510
#define BOOT_COMPLETE_VALUE 0x1
/* The counter (testguest.counter): a port a test may answer, and the amount of work. */
#define COUNTER_PORT        0x520
#define COUNTER_ROUNDS      16
#define COUNTER_STEPS       0x4000

/* Offsets into Linux's struct boot_params (arch/x86/include/uapi/asm/bootparam.h). */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE  0x0c4
#define BP_EXT_CMD_LINE_PTR  0x0c8
#define BP_E820_ENTRIES      0x1e8
#define BP_BOOT_FLAG         0x1fe
#define BP_HEADER            0x202
#define BP_TYPE_OF_LOADER    0x210
#define BP_RAMDISK_IMAGE     0x218
#define BP_RAMDISK_SIZE      0x21c
#define BP_CMD_LINE_PTR      0x228
#define BP_CMDLINE_SIZE      0x238
#define BP_E820_TABLE        0x2d0
#define E820_ENTRY_SIZE      20
#define E820_MAX_ENTRIES     128
#define E820_RAM             1

/* The SIPI vector page the application processors start from (real mode, below 1 MiB). */
#define TRAMPOLINE          0x8000

/* What the identity map built here covers: 16 GiB in 2 MiB pages. */
#define MAPPED_GIB          16
#define MAPPED_LIMIT        (MAPPED_GIB << 30)

#define MAX_CPUS            64
#define CMDLINE_MAX         0x10000

/* Local APIC registers (xAPIC MMIO offsets; x2APIC MSR = 0x800 + offset / 16). */
#define MSR_APIC_BASE       0x1b
#define APIC_BASE_ENABLE    (1 << 11)
#define APIC_BASE_X2APIC    (1 << 10)
#define APIC_ID             0x20
#define APIC_SVR            0xf0
#define APIC_ICR_LOW        0x300
#define APIC_ICR_HIGH       0x310
#define ICR_PENDING         (1 << 12)
#define ICR_INIT_ASSERT     0x4500
#define ICR_STARTUP         0x4600

#define MSR_EFER            0xc0000080
#define EFER_LME            (1 << 8)

#define SEL_CODE32          0x08
#define SEL_CODE64          0x10
#define SEL_DATA            0x18

/* Prints a string literal; registers are preserved. */
.macro PRINT text
    .pushsection .rodata.str, "a"
9990:
    .asciz "\text"
    .popsection
    push %rsi
    lea 9990b(%rip), %rsi
    call puts
    pop %rsi
.endm

/* Prints a label then the value of a register in hex; registers are preserved. */
.macro PRINTHEX label, reg
    PRINT "\label"
    push %rax
    mov \reg, %rax
    call puthex
    pop %rax
.endm

/* ------------------------------------------------------------------------------------------ */
.section .text.entry, "ax"
.code64
.globl _start
_start:
    cli
    cld
    mov %rsi, %r15                      /* boot_params, kept in r15 throughout */
    lea bsp_stack_top(%rip), %rsp
    call load_gdt
    call build_page_tables
    call load_idt

    PRINT "TESTGUEST start\n"
    PRINTHEX "BOOTPARAMS addr=", %r15
    movzwl BP_BOOT_FLAG(%r15), %eax
    PRINTHEX " boot_flag=", %rax
    mov BP_HEADER(%r15), %eax
    PRINTHEX " header=", %rax
    movzbl BP_TYPE_OF_LOADER(%r15), %eax
    PRINTHEX " type_of_loader=", %rax
    PRINT "\n"

    call check_e820
    call check_cmdline
    call check_initrd
    call check_mptable
    call probe_memory
    call check_cpus
    call check_virtio
    call signal_boot_complete
    call run_counter
    PRINT "TESTGUEST done\n"
    jmp reset_vm

/* ------------------------------------------------------------------------------------------ */
/* CPU state of our own: GDT, identity page tables, exception handlers. */

load_gdt:
    lgdt gdt_desc(%rip)
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    /* Reload CS through a far return: pop our own return address and go back through lretq. */
    pop %rax
    push $SEL_CODE64
    push %rax
    lretq

/* Identity-maps the first MAPPED_GIB GiB with 2 MiB pages, so that the guest does not depend
 * on how much the VMM's boot page tables cover. */
build_page_tables:
    lea page_dirs(%rip), %rdi
    mov $0x83, %eax                     /* present, writable, 2 MiB page */
    xor %ecx, %ecx
1:  mov %rax, (%rdi,%rcx,8)
    add $0x200000, %rax
    inc %ecx
    cmp $(MAPPED_GIB * 512), %ecx
    jb 1b

    lea pdpt(%rip), %rdi
    lea page_dirs(%rip), %rax
    or $3, %rax
    xor %ecx, %ecx
2:  mov %rax, (%rdi,%rcx,8)
    add $4096, %rax
    inc %ecx
    cmp $MAPPED_GIB, %ecx
    jb 2b

    lea pml4(%rip), %rdi
    lea pdpt(%rip), %rax
    or $3, %rax
    mov %rax, (%rdi)
    mov %rdi, %cr3
    ret

load_idt:
    lea idt(%rip), %rdi
    lea exception_stubs(%rip), %rsi
    xor %ecx, %ecx
1:  mov (%rsi,%rcx,8), %rax
    mov %ax, (%rdi)                     /* handler bits 15:0 */
    movw $SEL_CODE64, 2(%rdi)
    movw $0x8e00, 4(%rdi)               /* present, DPL 0, 64-bit interrupt gate */
    shr $16, %rax
    mov %ax, 6(%rdi)                    /* handler bits 31:16 */
    shr $16, %rax
    mov %eax, 8(%rdi)                   /* handler bits 63:32 */
    movl $0, 12(%rdi)
    add $16, %rdi
    inc %ecx
    cmp $32, %ecx
    jb 1b
    lidt idt_desc(%rip)
    ret

/* An exception means the guest (or what the VMM gave it) is broken: say which and stop. */
.macro EXCEPTION_NO_ERROR vector
exception_\vector:
    push $0
    push $\vector
    jmp exception_common
.endm
.macro EXCEPTION_WITH_ERROR vector
exception_\vector:
    push $\vector
    jmp exception_common
.endm
.irp v, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,29,30,31
EXCEPTION_NO_ERROR \v
.endr
.irp v, 8,10,11,12,13,14,17,21
EXCEPTION_WITH_ERROR \v
.endr

exception_common:
    mov (%rsp), %r8
    mov 8(%rsp), %r9
    mov 16(%rsp), %r10
    PRINTHEX "FAIL exception vector=", %r8
    PRINTHEX " error=", %r9
    PRINTHEX " rip=", %r10
    mov %cr2, %rax
    PRINTHEX " cr2=", %rax
    PRINT "\n"
    jmp reset_vm

/* ------------------------------------------------------------------------------------------ */
/* Serial output: putc (al), puts (rsi), puthex (rax). All preserve every register. */

putc:
    push %rdx
    mov $COM1, %dx
    out %al, %dx
    pop %rdx
    ret

puts:
    push %rax
    push %rsi
1:  movzbl (%rsi), %eax
    test %al, %al
    jz 2f
    call putc
    inc %rsi
    jmp 1b
2:  pop %rsi
    pop %rax
    ret

puthex:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    mov %rax, %rdx
    mov $'0', %al
    call putc
    mov $'x', %al
    call putc
    xor %ebx, %ebx                      /* set once the first non-zero digit is printed */
    mov $60, %ecx
1:  mov %rdx, %rax
    shr %cl, %rax
    and $0xf, %eax
    test %ebx, %ebx
    jnz 2f
    test %eax, %eax
    jnz 2f
    test %ecx, %ecx
    jnz 4f                              /* skip leading zeros, but always print the last digit */
2:  mov $1, %ebx
    cmp $10, %al
    jb 3f
    add $('a' - '0' - 10), %al
3:  add $'0', %al
    call putc
4:  sub $4, %ecx
    jge 1b
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* Prints the printable part of the byte string at rsi, rcx bytes long. */
put_printable:
    push %rax
    push %rcx
    push %rsi
    test %rcx, %rcx
    jz 3f
1:  movzbl (%rsi), %eax
    cmp $0x20, %al
    jb 2f
    cmp $0x7e, %al
    ja 2f
    call putc
    jmp 4f
2:  mov $'?', %al
    call putc
4:  inc %rsi
    dec %rcx
    jnz 1b
3:  pop %rsi
    pop %rcx
    pop %rax
    ret

reset_vm:
    mov $I8042_RESET, %al
    out %al, $I8042_COMMAND
1:  cli
    hlt
    jmp 1b

/* ------------------------------------------------------------------------------------------ */
/* e820: list every entry; the table must be non-empty, sorted and without overlaps.
 * Leaves the total of usable RAM in usable_bytes. */

check_e820:
    movzbl BP_E820_ENTRIES(%r15), %ecx
    PRINTHEX "E820 entries=", %rcx
    PRINT "\n"
    test %ecx, %ecx
    jz 8f
    cmp $E820_MAX_ENTRIES, %ecx
    ja 8f
    lea BP_E820_TABLE(%r15), %rbx
    xor %r12d, %r12d                    /* usable total */
    xor %r13d, %r13d                    /* end of the previous entry */
    xor %r14d, %r14d                    /* 1 once the table is found out of order */
1:  mov (%rbx), %rax
    mov 8(%rbx), %rdx
    mov 16(%rbx), %r8d
    PRINTHEX "E820 addr=", %rax
    PRINTHEX " size=", %rdx
    PRINTHEX " type=", %r8
    PRINT "\n"
    cmp %r13, %rax
    jae 2f
    mov $1, %r14d
2:  test %rdx, %rdx
    jnz 3f
    mov $1, %r14d
3:  lea (%rax,%rdx), %r13
    cmp %rax, %r13                      /* addr + size must not wrap */
    ja 4f
    mov $1, %r14d
4:  cmp $E820_RAM, %r8d
    jne 5f
    add %rdx, %r12
5:  add $E820_ENTRY_SIZE, %rbx
    dec %ecx
    jnz 1b
    mov %r12, usable_bytes(%rip)
    test %r14d, %r14d
    jnz 9f
    PRINTHEX "CHECK e820 ok usable_bytes=", %r12
    PRINT "\n"
    movb $1, e820_valid(%rip)
    ret
8:  PRINT "FAIL e820 bad_entry_count\n"
    ret
9:  PRINTHEX "FAIL e820 unsorted_overlapping_or_empty_entries usable_bytes=", %r12
    PRINT "\n"
    ret

/* Returns CF clear if [rdi, rdi + rsi) lies inside one usable e820 entry, CF set otherwise. */
range_in_usable_ram:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %r8
    cmpb $0, e820_valid(%rip)
    je 8f
    lea (%rdi,%rsi), %r8                /* end of the range */
    cmp %rdi, %r8
    jb 8f
    movzbl BP_E820_ENTRIES(%r15), %ecx
    lea BP_E820_TABLE(%r15), %rbx
1:  cmpl $E820_RAM, 16(%rbx)
    jne 2f
    mov (%rbx), %rax
    cmp %rax, %rdi
    jb 2f
    add 8(%rbx), %rax
    cmp %rax, %r8
    ja 2f
    clc
    jmp 9f
2:  add $E820_ENTRY_SIZE, %rbx
    dec %ecx
    jnz 1b
8:  stc
9:  pop %r8
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* Command line: where cmd_line_ptr (and ext_cmd_line_ptr) say, NUL-terminated, echoed whole. */

check_cmdline:
    mov BP_CMD_LINE_PTR(%r15), %eax
    mov BP_EXT_CMD_LINE_PTR(%r15), %edx
    shl $32, %rdx
    or %rdx, %rax
    test %rax, %rax
    jz 7f
    mov %rax, %rsi
    mov $CMDLINE_MAX, %rdi
    xor %ecx, %ecx
1:  cmpb $0, (%rsi,%rcx)
    je 2f
    inc %rcx
    cmp %rdi, %rcx
    jb 1b
    jmp 8f
2:  mov %rsi, cmdline_addr(%rip)
    mov %rcx, cmdline_len(%rip)
    PRINTHEX "CMDLINE addr=", %rsi
    PRINTHEX " len=", %rcx
    mov BP_CMDLINE_SIZE(%r15), %eax
    PRINTHEX " cmdline_size=", %rax
    PRINT "\n"
    PRINT "CMDLINE text=["
    call put_printable
    PRINT "]\n"
    mov %rsi, %rdi
    lea 1(%rcx), %rsi
    call range_in_usable_ram
    jc 9f
    PRINT "CHECK cmdline ok\n"
    ret
7:  PRINT "FAIL cmdline null_pointer\n"
    ret
8:  PRINT "FAIL cmdline unterminated\n"
    ret
9:  PRINT "FAIL cmdline outside_usable_ram\n"
    ret

/* ------------------------------------------------------------------------------------------ */
/* Initrd: where ramdisk_image/ramdisk_size say; its FNV-1a (32-bit) lets the test compare it
 * with the file it passed. */

check_initrd:
    mov BP_RAMDISK_IMAGE(%r15), %eax
    mov BP_EXT_RAMDISK_IMAGE(%r15), %edx
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rsi                      /* address */
    mov BP_RAMDISK_SIZE(%r15), %eax
    mov BP_EXT_RAMDISK_SIZE(%r15), %edx
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rcx                      /* size */
    test %rcx, %rcx
    jnz 1f
    PRINTHEX "CHECK initrd ok none addr=", %rsi
    PRINT "\n"
    ret
1:  mov %rsi, %rdi
    mov %rcx, %rsi
    call range_in_usable_ram
    jc 8f
    mov %rdi, %rsi
    lea (%rsi,%rcx), %rax
    mov $MAPPED_LIMIT, %rdx
    cmp %rdx, %rax
    ja 9f
    mov $0x811c9dc5, %eax               /* FNV-1a offset basis */
    mov %rcx, %rdx
2:  movzbl (%rsi), %ebx
    xor %ebx, %eax
    imul $0x01000193, %eax, %eax        /* FNV prime */
    inc %rsi
    dec %rdx
    jnz 2b
    PRINTHEX "CHECK initrd ok addr=", %rdi
    PRINTHEX " size=", %rcx
    PRINTHEX " fnv1a=", %rax
    PRINT "\n"
    ret
8:  PRINTHEX "FAIL initrd outside_usable_ram addr=", %rdi
    PRINTHEX " size=", %rsi
    PRINT "\n"
    ret
9:  PRINT "FAIL initrd beyond_identity_map\n"
    ret

/* ------------------------------------------------------------------------------------------ */
/* MP table (Intel MultiProcessor Specification 1.4): find the floating pointer in the last KiB
 * of base memory, the EBDA or the BIOS area, verify both checksums and collect the processors. */

/* Returns in rax the byte sum of rcx bytes at rsi (low 8 bits matter). */
byte_sum:
    push %rcx
    push %rdx
    push %rsi
    xor %eax, %eax
    test %rcx, %rcx
    jz 2f
1:  movzbl (%rsi), %edx
    add %edx, %eax
    inc %rsi
    dec %rcx
    jnz 1b
2:  pop %rsi
    pop %rdx
    pop %rcx
    ret

check_mptable:
    mov $0x80000, %rsi
1:  cmpl $0x5f504d5f, (%rsi)            /* "_MP_" */
    jne 2f
    movzbl 8(%rsi), %ecx                /* length in 16-byte units */
    shl $4, %ecx
    jz 2f
    call byte_sum
    test %al, %al
    jz 3f
2:  add $16, %rsi
    cmp $0x100000, %rsi
    jb 1b
    PRINT "FAIL mptable no_floating_pointer\n"
    ret

3:  mov 4(%rsi), %ebx                   /* configuration table */
    PRINTHEX "MPTABLE floating_pointer=", %rsi
    PRINTHEX " config=", %rbx
    PRINT "\n"
    test %ebx, %ebx
    jz 7f
    cmpl $0x504d4350, (%rbx)            /* "PCMP" */
    jne 8f
    movzwl 4(%rbx), %ecx                /* base table length */
    mov %rbx, %rsi
    call byte_sum
    test %al, %al
    jnz 9f

    mov 0x24(%rbx), %eax
    mov %rax, mp_lapic_address(%rip)
    movzwl 0x22(%rbx), %ecx             /* entry count */
    movzwl 4(%rbx), %r8d
    add %rbx, %r8                       /* end of the base table */
    lea 0x2c(%rbx), %rsi
    xor %r9d, %r9d                      /* I/O APICs seen */
    test %ecx, %ecx
    jz 6f
4:  cmp %r8, %rsi
    jae 10f
    movzbl (%rsi), %eax
    test %eax, %eax
    jz 41f
    cmp $2, %eax
    je 42f
    cmp $4, %eax
    ja 11f
    add $8, %rsi                        /* bus, interrupt assignments */
    jmp 5f
41: movzbl 1(%rsi), %edx                /* processor: local APIC id, flags */
    movzbl 3(%rsi), %r10d
    PRINTHEX "MPCPU apic=", %rdx
    PRINTHEX " flags=", %r10
    PRINT "\n"
    mov mp_cpu_count(%rip), %eax
    cmp $MAX_CPUS, %eax
    jae 12f
    lea mp_cpu_apic(%rip), %r11
    mov %dl, (%r11,%rax)
    lea mp_cpu_flags(%rip), %r11
    mov %r10b, (%r11,%rax)
    incl mp_cpu_count(%rip)
    add $20, %rsi
    jmp 5f
42: movzbl 1(%rsi), %edx                /* I/O APIC: id, address */
    mov 4(%rsi), %eax
    PRINTHEX "MPIOAPIC id=", %rdx
    PRINTHEX " addr=", %rax
    PRINT "\n"
    inc %r9d
    add $8, %rsi
5:  dec %ecx
    jnz 4b
6:  mov mp_cpu_count(%rip), %eax
    PRINTHEX "CHECK mptable ok cpus=", %rax
    PRINTHEX " ioapics=", %r9
    PRINTHEX " lapic=", mp_lapic_address(%rip)
    PRINT "\n"
    ret
7:  PRINT "FAIL mptable default_configuration_unsupported\n"
    ret
8:  PRINT "FAIL mptable bad_config_signature\n"
    ret
9:  PRINT "FAIL mptable bad_config_checksum\n"
    ret
10: PRINT "FAIL mptable entries_overrun_table\n"
    ret
11: PRINTHEX "FAIL mptable unknown_entry_type=", %rax
    PRINT "\n"
    ret
12: PRINT "FAIL mptable too_many_cpus\n"
    ret

/* ------------------------------------------------------------------------------------------ */
/* Memory probe: the first and last 8 bytes of every usable e820 range (within the identity
 * map) must hold what is written there, so the VMM backs all it announced. Runs after the
 * initrd and MP table checks because it writes (and restores) guest memory. */

/* Writes two patterns to the quadword at rdi and reads each back; restores the old value.
 * Returns CF set on a mismatch. */
probe_quad:
    push %rax
    push %rdx
    mov (%rdi), %rdx
    mov $0x5a5aa5a5c3c33c3c, %rax
    mov %rax, (%rdi)
    cmp (%rdi), %rax
    jne 1f
    not %rax
    mov %rax, (%rdi)
    cmp (%rdi), %rax
    jne 1f
    mov %rdx, (%rdi)
    clc
    jmp 2f
1:  mov %rdx, (%rdi)
    stc
2:  pop %rdx
    pop %rax
    ret

probe_memory:
    cmpb $0, e820_valid(%rip)
    jne 1f
    PRINT "FAIL memprobe no_valid_e820\n"
    ret
1:  movzbl BP_E820_ENTRIES(%r15), %ecx
    lea BP_E820_TABLE(%r15), %rbx
    xor %r12d, %r12d                    /* probes done */
    xor %r13d, %r13d                    /* ranges skipped: beyond the identity map */
    mov $MAPPED_LIMIT, %r14
2:  cmpl $E820_RAM, 16(%rbx)
    jne 4f
    mov (%rbx), %rdi
    mov 8(%rbx), %rax
    lea -8(%rdi,%rax), %rax             /* last quadword */
    cmp %r14, %rax
    jb 3f
    inc %r13
    jmp 4f
3:  call probe_quad
    jc 9f
    inc %r12
    mov %rax, %rdi
    call probe_quad
    jc 9f
    inc %r12
4:  add $E820_ENTRY_SIZE, %rbx
    dec %ecx
    jnz 2b
    PRINTHEX "CHECK memprobe ok probes=", %r12
    PRINTHEX " skipped_ranges=", %r13
    PRINT "\n"
    ret
9:  PRINTHEX "FAIL memprobe addr=", %rdi
    PRINT "\n"
    ret

/* ------------------------------------------------------------------------------------------ */
/* Local APIC access in whichever mode this CPU's APIC is in (xAPIC MMIO or x2APIC MSRs): an
 * AP comes out of INIT in xAPIC mode whatever mode the BSP runs in, so each access asks. */

/* Sets ZF if this CPU's local APIC is in xAPIC mode and leaves its MMIO base in rdx. */
lapic_mode:
    push %rax
    push %rcx
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    shl $32, %rdx
    mov %eax, %ecx
    and $0xfffff000, %ecx
    or %rcx, %rdx
    test $APIC_BASE_X2APIC, %eax
    pop %rcx
    pop %rax
    ret

/* Reads local APIC register ecx (xAPIC offset) into eax. */
lapic_read:
    push %rcx
    push %rdx
    call lapic_mode
    jnz 1f
    mov (%rdx,%rcx), %eax
    jmp 2f
1:  shr $4, %ecx
    add $0x800, %ecx
    rdmsr
2:  pop %rdx
    pop %rcx
    ret

/* Writes eax to local APIC register ecx (xAPIC offset). */
lapic_write:
    push %rcx
    push %rdx
    call lapic_mode
    jnz 1f
    mov %eax, (%rdx,%rcx)
    jmp 2f
1:  shr $4, %ecx
    add $0x800, %ecx
    xor %edx, %edx
    wrmsr
2:  pop %rdx
    pop %rcx
    ret

/* Local APIC id of the running CPU into eax. */
lapic_id:
    push %rcx
    push %rdx
    mov $APIC_ID, %ecx
    call lapic_read
    call lapic_mode
    jnz 1f
    shr $24, %eax
1:  pop %rdx
    pop %rcx
    ret

/* Sends the IPI command eax to the CPU whose APIC id is in edx and waits until it is sent. */
send_ipi:
    push %rax
    push %rcx
    push %rdx
    push %rbx
    push %rdx
    call lapic_mode
    pop %rdx
    jnz 3f
    mov %eax, %ebx
    mov %edx, %eax
    shl $24, %eax
    mov $APIC_ICR_HIGH, %ecx
    call lapic_write
    mov %ebx, %eax
    mov $APIC_ICR_LOW, %ecx
    call lapic_write
    mov $1000000, %ebx
1:  mov $APIC_ICR_LOW, %ecx
    call lapic_read
    test $ICR_PENDING, %eax
    jz 4f
    pause
    dec %ebx
    jnz 1b
    PRINT "FAIL ipi delivery_pending\n"
    jmp 4f
3:  mov $0x830, %ecx                    /* x2APIC ICR: destination in the high half */
    wrmsr
4:  pop %rbx
    pop %rdx
    pop %rcx
    pop %rax
    ret

/* Prints "CPU role=<role> cpuid_apic=.. x2apic_id=.. lapic_id=..\n" for the running CPU. */
report_cpu:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %r8
    push %r9
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %rbx, %r8                       /* initial APIC id from CPUID leaf 1 */
    PRINTHEX " cpuid_apic=", %r8
    xor %eax, %eax
    cpuid
    cmp $0xb, %eax
    jb 1f
    mov $0xb, %eax
    xor %ecx, %ecx
    cpuid
    mov %rdx, %r9                       /* x2APIC id from CPUID leaf 0xb */
    PRINTHEX " x2apic_id=", %r9
1:  call lapic_id
    PRINTHEX " lapic_id=", %rax
    PRINT "\n"
    pop %r9
    pop %r8
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* CPUs: the BSP reports its ids, then starts every other enabled processor of the MP table
 * with INIT-SIPI-SIPI, one at a time, and waits for each to report. */

check_cpus:
    mov $MSR_APIC_BASE, %ecx
    rdmsr
    test $APIC_BASE_ENABLE, %eax
    jnz 1f
    PRINT "FAIL cpus local_apic_disabled\n"
    ret
1:  shr $10, %eax
    and $1, %eax
    call lapic_mode
    PRINTHEX "LAPIC base=", %rdx
    PRINTHEX " x2apic=", %rax
    PRINT "\n"
    /* Software-enable the local APIC (spurious vector 0xff); interrupts stay masked by IF. */
    mov $APIC_SVR, %ecx
    mov $0x1ff, %eax
    call lapic_write

    PRINT "CPU role=bsp"
    call report_cpu

    cmpl $0, mp_cpu_count(%rip)
    jne 2f
    PRINT "FAIL cpus no_mptable_processors\n"
    ret
2:  mov $TRAMPOLINE, %rdi
    mov $0x1000, %rsi
    call range_in_usable_ram
    jnc 3f
    PRINT "FAIL cpus trampoline_page_not_usable_ram\n"
    ret
3:  /* Copy the real-mode trampoline to the SIPI page. */
    lea trampoline_start(%rip), %rsi
    mov $TRAMPOLINE, %rdi
    mov $(trampoline_end - trampoline_start), %ecx
    rep movsb

    call lapic_id
    mov %eax, %r13d                     /* our own APIC id */
    xor %r12d, %r12d                    /* index into the MP processors */
    xor %r14d, %r14d                    /* APs that reported */
4:  cmp mp_cpu_count(%rip), %r12d
    jae 8f
    lea mp_cpu_flags(%rip), %rax
    movzbl (%rax,%r12), %eax
    test $1, %eax                       /* enabled */
    jz 7f
    lea mp_cpu_apic(%rip), %rdx
    movzbl (%rdx,%r12), %edx
    cmp %r13d, %edx
    je 7f                               /* that is us */
    test $2, %eax                       /* flagged as the BSP but it is not us */
    jz 5f
    PRINTHEX "FAIL cpus mptable_bsp_flag_on_apic=", %rdx
    PRINT "\n"
5:  movl $0, ap_reported(%rip)
    mov $ICR_INIT_ASSERT, %eax
    call send_ipi
    mov $(ICR_STARTUP | (TRAMPOLINE >> 12)), %eax
    call send_ipi
    call send_ipi
    mov $20000000, %ecx
6:  cmpl $0, ap_reported(%rip)
    jne 61f
    pause
    dec %ecx
    jnz 6b
    PRINTHEX "FAIL cpus ap_timeout apic=", %rdx
    PRINT "\n"
    jmp 7f
61: inc %r14d
7:  inc %r12d
    jmp 4b
8:  PRINTHEX "CHECK cpus ok aps_reported=", %r14
    PRINT "\n"
    ret

/* ------------------------------------------------------------------------------------------ */

signal_boot_complete:
    mov $BOOT_COMPLETE_VALUE, %al
    mov $BOOT_COMPLETE_PORT, %dx
    out %al, %dx
    PRINT "CHECK boot_complete ok port=0x510 value=0x1\n"
    ret

/* ------------------------------------------------------------------------------------------ */
/* With `testguest.counter` on the command line: a deterministic computation in rounds, long
 * enough to be paused in the middle of (snapshot tests). Each round reads COUNTER_PORT (a
 * test device answers; unclaimed it reads all ones) into the state, runs COUNTER_STEPS
 * xorshift steps plus the round number, and prints the state; the last line has the result. */

run_counter:
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rdi
    push %r12
    lea counter_key(%rip), %rdi
    mov $(counter_key_end - counter_key), %edx
    call cmdline_contains
    jc 9f
    PRINT "COUNTER start\n"
    mov $0x9e3779b97f4a7c15, %rbx       /* the state */
    xor %r12d, %r12d                    /* the round */
1:  mov $COUNTER_PORT, %dx
    in %dx, %eax                        /* zero-extended into rax */
    xor %rax, %rbx
    mov $COUNTER_STEPS, %ecx
2:  mov %rbx, %rax
    shl $13, %rax
    xor %rax, %rbx
    mov %rbx, %rax
    shr $7, %rax
    xor %rax, %rbx
    mov %rbx, %rax
    shl $17, %rax
    xor %rax, %rbx
    add %r12, %rbx
    dec %ecx
    jnz 2b
    PRINTHEX "COUNTER round=", %r12
    PRINTHEX " value=", %rbx
    PRINT "\n"
    inc %r12
    cmp $COUNTER_ROUNDS, %r12
    jb 1b
    PRINTHEX "CHECK counter ok value=", %rbx
    PRINT "\n"
9:  pop %r12
    pop %rdi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    ret

/* ------------------------------------------------------------------------------------------ */
/* Application processor path: the trampoline is copied to TRAMPOLINE and entered in real mode
 * at CS = TRAMPOLINE >> 4, IP = 0; it must only use offsets relative to its own start. */

.balign 16
trampoline_start:
.code16
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (trampoline_gdt_desc - trampoline_start)
    mov %cr0, %eax
    and $0x9fffffff, %eax               /* caches on (INIT leaves CD and NW set) */
    or $1, %eax                         /* protected mode */
    mov %eax, %cr0
    ljmpl $SEL_CODE32, $ap_protected_mode
.balign 4
trampoline_gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
trampoline_end:

.code32
ap_protected_mode:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax                      /* PAE */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $MSR_EFER, %ecx
    rdmsr
    or $EFER_LME, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax                /* paging: long mode becomes active */
    mov %eax, %cr0
    ljmp $SEL_CODE64, $ap_long_mode

.code64
ap_long_mode:
    mov $SEL_DATA, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea ap_stack_top(%rip), %rsp
    lidt idt_desc(%rip)
    PRINT "CPU role=ap"
    call report_cpu
    movl $1, ap_reported(%rip)
1:  cli
    hlt
    jmp 1b

/* ------------------------------------------------------------------------------------------ */
.section .rodata
.balign 16
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff            /* 0x08: 32-bit code, flat */
    .quad 0x00af9a000000ffff            /* 0x10: 64-bit code */
    .quad 0x00cf92000000ffff            /* 0x18: data, flat */
gdt_end:
.balign 8
gdt_desc:
    .word gdt_end - gdt - 1
    .quad gdt
.balign 8
idt_desc:
    .word 32 * 16 - 1
    .quad idt

counter_key:
    .ascii "testguest.counter"
counter_key_end:

.balign 8
exception_stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad exception_\v
.endr

/* ------------------------------------------------------------------------------------------ */
.section .data
.balign 8
ap_reported:        .long 0
mp_cpu_count:       .long 0
usable_bytes:       .quad 0
mp_lapic_address:   .quad 0
e820_valid:         .byte 0
mp_cpu_apic:        .fill MAX_CPUS, 1, 0
mp_cpu_flags:       .fill MAX_CPUS, 1, 0

.section .bss
.balign 4096
pml4:               .skip 4096
pdpt:               .skip 4096
page_dirs:          .skip MAPPED_GIB * 4096
idt:                .skip 32 * 16
.balign 16
                    .skip 16384
bsp_stack_top:
                    .skip 8192
ap_stack_top:

#include "virtio.S"
