//! A small classic-BPF generator for seccomp filters.
//!
//! The program checks the architecture, then tests one rule after the other (first match
//! wins) and ends with the default action. Every rule is a self-contained block, so every
//! conditional jump stays inside its block or lands on the next one, well within the 8-bit
//! jump offsets of classic BPF.

/// One classic BPF instruction (struct sock_filter).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SockFilter {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// Offsets into struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const fn off_arg_lo(i: u8) -> u32 {
    16 + 8 * i as u32
}
const fn off_arg_hi(i: u8) -> u32 {
    off_arg_lo(i) + 4
}

pub(crate) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// x32 system calls run on x86_64 with this bit set in the number.
pub(crate) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// How an argument is compared (the OCI / libseccomp operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & mask) == value`
    MaskedEq {
        mask: u64,
    },
}

/// A condition on one 64-bit system call argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgCmp {
    pub index: u8,
    pub op: CmpOp,
    pub value: u64,
}

/// One rule: when `nr` is called and every condition holds, return `action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    pub nr: u32,
    pub conditions: Vec<ArgCmp>,
    pub action: u32,
}

#[derive(Clone, Copy)]
enum Target {
    Next,
    /// The first instruction after the current condition: it held.
    Pass,
    /// The first instruction of the next rule: this rule does not match.
    Fail,
}

struct Pending {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

fn stmt(code: u16, k: u32) -> Pending {
    Pending {
        code,
        k,
        jt: Target::Next,
        jf: Target::Next,
    }
}

fn jump(code: u16, k: u32, jt: Target, jf: Target) -> Pending {
    Pending { code, k, jt, jf }
}

fn condition(c: &ArgCmp) -> Vec<Pending> {
    use Target::*;
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let ld_hi = stmt(LD_W_ABS, off_arg_hi(c.index));
    let ld_lo = stmt(LD_W_ABS, off_arg_lo(c.index));
    match c.op {
        CmpOp::Eq => vec![
            ld_hi,
            jump(JEQ_K, hi, Next, Fail),
            ld_lo,
            jump(JEQ_K, lo, Next, Fail),
        ],
        CmpOp::Ne => vec![
            ld_hi,
            jump(JEQ_K, hi, Next, Pass),
            ld_lo,
            jump(JEQ_K, lo, Fail, Next),
        ],
        CmpOp::Gt => vec![
            ld_hi,
            jump(JGT_K, hi, Pass, Next),
            jump(JEQ_K, hi, Next, Fail),
            ld_lo,
            jump(JGT_K, lo, Next, Fail),
        ],
        CmpOp::Ge => vec![
            ld_hi,
            jump(JGT_K, hi, Pass, Next),
            jump(JEQ_K, hi, Next, Fail),
            ld_lo,
            jump(JGE_K, lo, Next, Fail),
        ],
        CmpOp::Lt => vec![
            ld_hi,
            jump(JGT_K, hi, Fail, Next),
            jump(JEQ_K, hi, Next, Pass),
            ld_lo,
            jump(JGE_K, lo, Fail, Next),
        ],
        CmpOp::Le => vec![
            ld_hi,
            jump(JGT_K, hi, Fail, Next),
            jump(JEQ_K, hi, Next, Pass),
            ld_lo,
            jump(JGT_K, lo, Fail, Next),
        ],
        CmpOp::MaskedEq { mask } => vec![
            ld_hi,
            stmt(AND_K, (mask >> 32) as u32),
            jump(JEQ_K, hi, Next, Fail),
            ld_lo,
            stmt(AND_K, mask as u32),
            jump(JEQ_K, lo, Next, Fail),
        ],
    }
}

fn offset(from: usize, to: usize) -> Result<u8, String> {
    u8::try_from(to - from - 1).map_err(|_| "seccomp rule too long for a BPF jump".to_string())
}

/// Compiles the rules into a program for x86_64. System calls of any other ABI (i386 via
/// int 0x80, x32) get `foreign_action`, since the rules name x86_64 numbers only.
pub(crate) fn compile(
    rules: &[Rule],
    default_action: u32,
    foreign_action: u32,
) -> Result<Vec<SockFilter>, String> {
    let mut prog = vec![
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: OFF_ARCH,
        },
        SockFilter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH_X86_64,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: foreign_action,
        },
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: OFF_NR,
        },
        SockFilter {
            code: JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: foreign_action,
        },
    ];
    // The accumulator holds the syscall number until a block loads an argument.
    let mut acc_is_nr = true;
    for rule in rules {
        let mut block: Vec<Pending> = Vec::new();
        if !acc_is_nr {
            block.push(stmt(LD_W_ABS, OFF_NR));
        }
        block.push(jump(JEQ_K, rule.nr, Target::Next, Target::Fail));
        // (start, end) of every condition, to resolve Pass.
        let mut spans = Vec::new();
        for c in &rule.conditions {
            let start = block.len();
            block.extend(condition(c));
            spans.push((start, block.len()));
        }
        block.push(stmt(RET_K, rule.action));
        let end = block.len();
        for (i, p) in block.iter().enumerate() {
            let pass_of = |i: usize| {
                spans
                    .iter()
                    .find(|(s, e)| *s <= i && i < *e)
                    .map(|&(_, e)| e)
                    .unwrap_or(i + 1)
            };
            let resolve = |t: Target| -> Result<u8, String> {
                match t {
                    Target::Next => Ok(0),
                    Target::Pass => offset(i, pass_of(i)),
                    Target::Fail => offset(i, end),
                }
            };
            prog.push(SockFilter {
                code: p.code,
                jt: resolve(p.jt)?,
                jf: resolve(p.jf)?,
                k: p.k,
            });
        }
        acc_is_nr = rule.conditions.is_empty();
    }
    prog.push(SockFilter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: default_action,
    });
    if prog.len() > 4096 {
        return Err(format!(
            "seccomp program has {} instructions, more than the kernel's 4096",
            prog.len()
        ));
    }
    Ok(prog)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs a program the way the kernel would, for the subset of BPF we emit.
    pub(crate) fn run(prog: &[SockFilter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let word =
            |off: u32| u32::from_le_bytes(data[off as usize..off as usize + 4].try_into().unwrap());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => acc = word(i.k),
                AND_K => acc &= i.k,
                RET_K => return i.k,
                JEQ_K | JGT_K | JGE_K => {
                    let taken = match i.code {
                        JEQ_K => acc == i.k,
                        JGT_K => acc > i.k,
                        _ => acc >= i.k,
                    };
                    pc += if taken { i.jt } else { i.jf } as usize;
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const DENY: u32 = 0x0005_0001;
    const FOREIGN: u32 = 0x0005_0026;

    fn one(op: CmpOp, value: u64) -> Vec<SockFilter> {
        let rule = Rule {
            nr: 7,
            conditions: vec![ArgCmp {
                index: 2,
                op,
                value,
            }],
            action: DENY,
        };
        compile(&[rule], ALLOW, FOREIGN).unwrap()
    }

    #[test]
    fn comparisons_follow_64_bit_semantics() {
        let values = [
            0u64,
            1,
            5,
            0xffff_ffff,
            0x1_0000_0000,
            0x1_0000_0005,
            u64::MAX,
        ];
        type Holds = fn(u64, u64) -> bool;
        let ops: [(CmpOp, Holds); 6] = [
            (CmpOp::Eq, |a, b| a == b),
            (CmpOp::Ne, |a, b| a != b),
            (CmpOp::Lt, |a, b| a < b),
            (CmpOp::Le, |a, b| a <= b),
            (CmpOp::Gt, |a, b| a > b),
            (CmpOp::Ge, |a, b| a >= b),
        ];
        for (op, f) in ops {
            for &v in &values {
                let prog = one(op, v);
                for &a in &values {
                    let got = run(&prog, AUDIT_ARCH_X86_64, 7, [0, 0, a, 0, 0, 0]);
                    let want = if f(a, v) { DENY } else { ALLOW };
                    assert_eq!(got, want, "{op:?} arg={a:#x} value={v:#x}");
                }
            }
        }
    }

    #[test]
    fn masked_eq_and_other_syscalls() {
        let prog = one(
            CmpOp::MaskedEq {
                mask: 0xff00_0000_00ff,
            },
            0x1200_0000_0034,
        );
        let r = |nr, a| run(&prog, AUDIT_ARCH_X86_64, nr, [0, 0, a, 0, 0, 0]);
        assert_eq!(r(7, 0x1299_0000_7734), DENY);
        assert_eq!(r(7, 0x1399_0000_7734), ALLOW);
        assert_eq!(r(8, 0x1299_0000_7734), ALLOW);
    }

    #[test]
    fn first_matching_rule_wins_and_foreign_abis_are_caught() {
        let rules = vec![
            Rule {
                nr: 1,
                conditions: vec![ArgCmp {
                    index: 0,
                    op: CmpOp::Eq,
                    value: 2,
                }],
                action: ALLOW,
            },
            Rule {
                nr: 1,
                conditions: vec![],
                action: 0x0005_0009,
            },
            Rule {
                nr: 3,
                conditions: vec![],
                action: ALLOW,
            },
        ];
        let prog = compile(&rules, DENY, FOREIGN).unwrap();
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 1, [2, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, 1, [3, 0, 0, 0, 0, 0]),
            0x0005_0009
        );
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 3, [0; 6]), ALLOW);
        assert_eq!(run(&prog, AUDIT_ARCH_X86_64, 4, [0; 6]), DENY);
        assert_eq!(run(&prog, 0x4000_0003, 3, [0; 6]), FOREIGN);
        assert_eq!(
            run(&prog, AUDIT_ARCH_X86_64, 3 | X32_SYSCALL_BIT, [0; 6]),
            FOREIGN
        );
    }
}
