//! A tiny typed eBPF instruction builder: the few instructions the sockmap verdict program
//! needs, encoded as the kernel's `struct bpf_insn` (8 bytes, little-endian host order).
//! Jumps go to [`Label`]s resolved by [`Asm::finish`], so no offset is counted by hand.

/// An eBPF register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value, helper results.
    R0 = 0,
    /// First argument (the program's context on entry).
    R1 = 1,
    /// Second argument.
    R2 = 2,
    /// Third argument.
    R3 = 3,
    /// Fourth argument.
    R4 = 4,
    /// Fifth argument.
    R5 = 5,
    /// Callee-saved.
    R6 = 6,
    /// Callee-saved.
    R7 = 7,
    /// Callee-saved.
    R8 = 8,
    /// Callee-saved.
    R9 = 9,
    /// The read-only frame pointer (the stack grows down from it, 512 bytes).
    R10 = 10,
}

/// Width of a memory access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// 4 bytes.
    W,
    /// 8 bytes.
    Dw,
}

impl Size {
    fn bits(self) -> u8 {
        match self {
            Size::W => 0x00,
            Size::Dw => 0x18,
        }
    }
}

// Opcode parts (include/uapi/linux/bpf_common.h, bpf.h).
const LD: u8 = 0x00;
const LDX: u8 = 0x01;
const STX: u8 = 0x03;
const JMP: u8 = 0x05;
const ALU64: u8 = 0x07;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
const K: u8 = 0x00;
const X: u8 = 0x08;
const ADD: u8 = 0x00;
const MOV: u8 = 0xb0;
const JEQ: u8 = 0x10;
const CALL: u8 = 0x80;
const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that names a map by file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// One encoded instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// Destination register (low nibble of byte 1).
    pub dst: u8,
    /// Source register (high nibble of byte 1).
    pub src: u8,
    /// Signed offset.
    pub off: i16,
    /// Signed immediate.
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.dst & 0x0f) | ((self.src & 0x0f) << 4);
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }
}

/// A jump target, placed with [`Asm::bind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// An assembler: instructions in order, jumps resolved at [`Asm::finish`].
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    /// (index of the jump instruction, its target).
    jumps: Vec<(usize, Label)>,
}

/// A jump to a label that was never bound, or one too far for a 16-bit offset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unresolvable jump at instruction {at}")]
pub struct AsmError {
    /// Index of the jump.
    pub at: usize,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    fn push(&mut self, code: u8, dst: Reg, src: u8, off: i16, imm: i32) -> &mut Self {
        self.insns.push(Insn {
            code,
            dst: dst as u8,
            src,
            off,
            imm,
        });
        self
    }

    /// `dst = src` (64-bit).
    pub fn mov64_reg(&mut self, dst: Reg, src: Reg) -> &mut Self {
        self.push(ALU64 | MOV | X, dst, src as u8, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(ALU64 | MOV | K, dst, 0, 0, imm)
    }

    /// `dst += imm` (64-bit).
    pub fn add64_imm(&mut self, dst: Reg, imm: i32) -> &mut Self {
        self.push(ALU64 | ADD | K, dst, 0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(&mut self, size: Size, dst: Reg, src: Reg, off: i16) -> &mut Self {
        self.push(LDX | MEM | size.bits(), dst, src as u8, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(&mut self, size: Size, dst: Reg, off: i16, src: Reg) -> &mut Self {
        self.push(STX | MEM | size.bits(), dst, src as u8, off, 0)
    }

    /// `dst = map` (the two-slot 64-bit immediate load the loader turns into a map pointer).
    pub fn load_map_fd(&mut self, dst: Reg, fd: i32) -> &mut Self {
        self.push(LD | IMM | Size::Dw.bits(), dst, PSEUDO_MAP_FD, 0, fd);
        self.insns.push(Insn {
            code: 0,
            dst: 0,
            src: 0,
            off: 0,
            imm: 0,
        });
        self
    }

    /// A new, unbound label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub fn bind(&mut self, l: Label) -> &mut Self {
        if let Some(slot) = self.labels.get_mut(l.0) {
            *slot = Some(self.insns.len());
        }
        self
    }

    /// `if dst == imm goto l`.
    pub fn jeq_imm(&mut self, dst: Reg, imm: i32, l: Label) -> &mut Self {
        self.jumps.push((self.insns.len(), l));
        self.push(JMP | JEQ | K, dst, 0, 0, imm)
    }

    /// Calls helper number `helper` (arguments in r1-r5, result in r0).
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.push(JMP | CALL, Reg::R0, 0, 0, helper)
    }

    /// Returns r0.
    pub fn exit(&mut self) -> &mut Self {
        self.push(JMP | EXIT, Reg::R0, 0, 0, 0)
    }

    /// The program, jumps resolved.
    pub fn finish(mut self) -> Result<Vec<Insn>, AsmError> {
        for (at, l) in std::mem::take(&mut self.jumps) {
            let target = self
                .labels
                .get(l.0)
                .copied()
                .flatten()
                .ok_or(AsmError { at })?;
            // Offsets count from the instruction after the jump.
            let rel = i64::try_from(target).unwrap_or(i64::MAX)
                - i64::try_from(at).unwrap_or(i64::MAX)
                - 1;
            let off = i16::try_from(rel).map_err(|_| AsmError { at })?;
            if let Some(i) = self.insns.get_mut(at) {
                i.off = off;
            }
        }
        Ok(self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_the_kernel_macros() {
        let mut a = Asm::new();
        let l = a.label();
        a.mov64_reg(Reg::R6, Reg::R1) // BPF_MOV64_REG(6, 1): bf 16
            .load(Size::W, Reg::R2, Reg::R6, 0) // BPF_LDX_MEM(W, 2, 6, 0): 61 62
            .jeq_imm(Reg::R2, 0, l) // BPF_JMP_IMM(JEQ, 2, 0, +2): 15 02 0200
            .store(Size::Dw, Reg::R10, -8, Reg::R0) // BPF_STX_MEM(DW, 10, 0, -8): 7b 0a f8ff
            .add64_imm(Reg::R3, -8) // 07 03 .. f8ffffff
            .bind(l)
            .mov64_imm(Reg::R0, 0)
            .exit();
        let p = a.finish().expect("resolves");
        assert_eq!(p[0].encode(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p[1].encode(), [0x61, 0x62, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p[2].encode(), [0x15, 0x02, 2, 0, 0, 0, 0, 0]);
        assert_eq!(p[3].encode(), [0x7b, 0x0a, 0xf8, 0xff, 0, 0, 0, 0]);
        assert_eq!(p[4].encode(), [0x07, 0x03, 0, 0, 0xf8, 0xff, 0xff, 0xff]);
        assert_eq!(p[5].encode(), [0xb7, 0x00, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p[6].encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn map_loads_take_two_slots_and_unbound_labels_fail() {
        let mut a = Asm::new();
        a.load_map_fd(Reg::R2, 7);
        let p = a.finish().expect("no jumps");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].encode(), [0x18, 0x12, 0, 0, 7, 0, 0, 0]);
        assert_eq!(p[1].encode(), [0; 8]);
        let mut b = Asm::new();
        let l = b.label();
        b.jeq_imm(Reg::R0, 0, l);
        assert_eq!(b.finish(), Err(AsmError { at: 0 }));
    }
}
