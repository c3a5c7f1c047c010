//! `lowbit bench kernels --only attention`: exact and SageAttention on ViT-B/16's attention
//! (one image and a batch of 8) and on the VQGAN mid-block (one head of 512 channels over
//! 16×16 tokens), each with the kernel `kernel_for` picks (flash under `--plan gpu`).

use super::{attention, kernel_for, realistic_qkv, sage_attention_with, AttentionKernel, AttentionParams, SageOptions, SageScratch};
use crate::gpu::{DType, Tensor};
use crate::kernels::{BenchCase, BenchSize};
use crate::{Gpu, Result};

pub fn bench_cases(gpu: &Gpu, size: BenchSize) -> Result<Vec<BenchCase>> {
    let shapes = match size {
        BenchSize::Full => vec![
            AttentionParams::new(1, 197, 12, 64),
            AttentionParams::new(8, 197, 12, 64),
            AttentionParams::new(1, 256, 1, 512),
        ],
        BenchSize::Quick => vec![AttentionParams::new(1, 37, 2, 64)],
    };
    // The kernel in the format column, so runs under different plans read apart.
    let kernel = match kernel_for(gpu) {
        AttentionKernel::Flash => "-flash",
        AttentionKernel::PerQuery => "",
    };
    let mut cases = Vec::new();
    for p in shapes {
        let (b, t, h, d) = (p.batch as u64, p.tokens as u64, p.heads as u64, p.head_dim as u64);
        let shape = format!("B{b} T{t} H{h} D{d}");
        let bytes = 3 * b * t * h * d * 4;
        let flops = 4 * b * h * t * t * d;
        let qkv = Tensor::from_f32(gpu, &p.qkv_shape(), &realistic_qkv(&p, 1))?;
        let out = Tensor::zeros(gpu, &p.out_shape(), DType::F32)?;
        let (q, o) = (qkv.clone(), out.clone());
        cases.push(BenchCase {
            kernel: "attention".into(),
            format: format!("f32{kernel}"),
            shape: shape.clone(),
            bytes,
            flops,
            step: Box::new(move |gpu, enc| attention(gpu, enc, &q, &o, p)),
        });
        let mut pv = vec![false];
        if gpu.caps.f16 {
            pv.insert(0, true);
        }
        for pv_f16 in pv {
            let scratch = SageScratch::new(gpu, p, SageOptions { pv_f16, ..Default::default() })?;
            let (q, o) = (qkv.clone(), out.clone());
            cases.push(BenchCase {
                kernel: "attention".into(),
                format: format!("sage-int8-{}{kernel}", if pv_f16 { "f16pv" } else { "f32pv" }),
                shape: shape.clone(),
                bytes,
                flops,
                step: Box::new(move |gpu, enc| sage_attention_with(gpu, enc, &q, &o, &scratch)),
            });
        }
    }
    Ok(cases)
}
