//! The GPU side of every weight format, as data: one row per family of `WeightFormat` says how
//! its packed words decode, and `prelude` turns a row into the WGSL constants that the one
//! decoder (`shaders/decode.wgsl`) reads. GEMV, GEMM and convolution kernels all include
//! that decoder, so a format is described here once and nowhere in the shaders.
//!
//! Integer codes become floats with the magic-number trick: `bitcast<f32>(0x4B000000 | q)` is
//! exactly 2^23 + q, so subtracting `offset` = 2^23 + (the code's zero) gives q − zero in one
//! subtraction (for Q4 with zero points the group's zero is added to the offset at run time).

use super::WeightFormat;

/// How a family's words decode; see `shaders/decode.wgsl` for the code that reads each field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuDecode {
    /// The define that names the family in pipeline keys and selects this row's prelude.
    pub define: &'static str,
    pub kind: DecodeKind,
    /// Bits per element; elements are packed LSB first.
    pub bits: u32,
    /// XORed into the word before the codes are extracted (Q8 stores two's complement; XOR
    /// 0x80 per byte turns it into offset binary, code + 128).
    pub xor: u32,
    /// Subtracted from 2^23 + code (integer kinds).
    pub offset: f32,
    /// Multiplies every group scale (FP4's decoder yields value · 2^-14).
    pub scale_mul: f32,
    /// The format carries f16 group scales (binding `w_scales`).
    pub scaled: bool,
    /// The format carries 4-bit zero points (binding `w_zeros`).
    pub zero_points: bool,
}

/// What a word holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKind {
    /// Unsigned integer codes minus an offset (Q8, Q4, ternary).
    Int = 0,
    F32 = 1,
    /// Two IEEE halves.
    F16 = 2,
    /// E2M1 codes, remapped to f16 bit patterns.
    Fp4 = 3,
}

const MAGIC: f32 = 8_388_608.0; // 2^23

/// Every family, in `WeightFormat` order.
pub const FAMILIES: [GpuDecode; 7] = [
    GpuDecode { define: "FMT_F32", kind: DecodeKind::F32, bits: 32, xor: 0, offset: 0.0, scale_mul: 1.0, scaled: false, zero_points: false },
    GpuDecode { define: "FMT_F16", kind: DecodeKind::F16, bits: 16, xor: 0, offset: 0.0, scale_mul: 1.0, scaled: false, zero_points: false },
    GpuDecode {
        define: "FMT_Q8",
        kind: DecodeKind::Int,
        bits: 8,
        xor: 0x8080_8080,
        offset: MAGIC + 128.0,
        scale_mul: 1.0,
        scaled: true,
        zero_points: false,
    },
    GpuDecode { define: "FMT_Q4", kind: DecodeKind::Int, bits: 4, xor: 0, offset: MAGIC + 8.0, scale_mul: 1.0, scaled: true, zero_points: false },
    GpuDecode { define: "FMT_Q4Z", kind: DecodeKind::Int, bits: 4, xor: 0, offset: MAGIC, scale_mul: 1.0, scaled: true, zero_points: true },
    GpuDecode {
        define: "FMT_TERNARY",
        kind: DecodeKind::Int,
        bits: 2,
        xor: 0,
        offset: MAGIC + 1.0,
        scale_mul: 1.0,
        scaled: true,
        zero_points: false,
    },
    GpuDecode { define: "FMT_FP4", kind: DecodeKind::Fp4, bits: 4, xor: 0, offset: 0.0, scale_mul: 16384.0, scaled: true, zero_points: false },
];

impl GpuDecode {
    /// The row whose define is `define`.
    pub fn by_define(define: &str) -> Option<&'static GpuDecode> {
        FAMILIES.iter().find(|f| f.define == define)
    }

    pub fn per_word(&self) -> u32 {
        32 / self.bits
    }

    /// The WGSL constants `shaders/decode.wgsl` expects, for `#include format`.
    pub fn prelude(&self) -> String {
        format!(
            "// {define}: generated from lowbit::formats::wgsl::FAMILIES.\n\
             const W_KIND: u32 = {kind}u;\nconst W_BITS: u32 = {bits}u;\nconst PW: u32 = {pw}u;\n\
             const W_MASK: u32 = {mask:#x}u;\nconst W_XOR: u32 = {xor:#x}u;\n\
             const OFFSET: f32 = {offset:.1};\nconst SCALE_MUL: f32 = {mul:.1};\n\
             const HAS_ZERO_POINTS: bool = {zeros};\n",
            define = self.define,
            kind = self.kind as u32,
            bits = self.bits,
            pw = self.per_word(),
            mask = if self.bits == 32 { u32::MAX } else { (1u32 << self.bits) - 1 },
            xor = self.xor,
            offset = self.offset,
            mul = self.scale_mul,
            zeros = self.zero_points,
        )
    }
}

impl WeightFormat {
    /// This format's row of [`FAMILIES`].
    pub fn gpu_decode(self) -> &'static GpuDecode {
        let define = match self {
            WeightFormat::F32 => "FMT_F32",
            WeightFormat::F16 => "FMT_F16",
            WeightFormat::Q8 { .. } => "FMT_Q8",
            WeightFormat::Q4 { zero_point: false, .. } => "FMT_Q4",
            WeightFormat::Q4 { zero_point: true, .. } => "FMT_Q4Z",
            WeightFormat::Ternary => "FMT_TERNARY",
            WeightFormat::Fp4 { .. } => "FMT_FP4",
        };
        GpuDecode::by_define(define).expect("every format has a row in FAMILIES")
    }

    /// The defines a kernel that decodes this format needs: the family's name, plus SCALED and
    /// ZERO_POINTS for the optional bindings.
    pub fn wgsl_defines(self) -> Vec<&'static str> {
        let d = self.gpu_decode();
        let mut v = vec![d.define];
        if d.scaled {
            v.push("SCALED");
        }
        if d.zero_points {
            v.push("ZERO_POINTS");
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_agree_with_the_cpu_formats() {
        for f in WeightFormat::all() {
            let d = f.gpu_decode();
            assert_eq!(d.bits as usize, f.bits(), "{}", f.name());
            assert_eq!(d.scaled, !matches!(f, WeightFormat::F32 | WeightFormat::F16), "{}", f.name());
        }
        assert!(GpuDecode::by_define("FMT_Q4Z").unwrap().prelude().contains("const PW: u32 = 8u;"));
    }
}
