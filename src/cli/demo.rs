//! `lowbit demo`: a tour of what the engine does today, measured on this adapter.
//!
//! A ViT-Base MLP layer (768 → 3072, GELU, 197 tokens) runs in every weight format and is
//! compared with its f32 output; ViT-Base attention runs in f32 and in SageAttention int8; a
//! LlamaGen-sized codebook is searched. Each result is checked against the CPU reference, so the
//! demo doubles as a self-test on an unfamiliar GPU. The model-level demo (classify, generate,
//! round-trip) builds on these kernels.

use std::time::Instant;

use clap::Args;

use crate::gpu::{DType, Tensor};
use crate::kernels::attention::{self, AttentionParams, SageOptions};
use crate::kernels::elementwise::Activation;
use crate::kernels::matmul::{linear, linear_reference, QLinear};
use crate::kernels::vq::{self, Codebook, Metric};
use crate::metrics::{cosine, nmse, relative_l1, sqnr_db};
use crate::quant::{PackedMatrix, WeightFormat};
use crate::Gpu;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the JSON summary.
    #[arg(long, default_value = "out")]
    out: std::path::PathBuf,
}

/// Deterministic weights with the heavy-tailed rows real checkpoints have.
fn synthetic(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let u = crate::synthetic::uniform(n, seed, 1.0);
    u.iter().enumerate().map(|(i, &u)| u * u * u.signum() * scale * if i % 97 == 0 { 4.0 } else { 1.0 }).collect()
}

pub fn run(gpu: &Gpu, args: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    println!("lowbit demo on {} ({:?}; f16 {}, subgroups {}, packed dot {})\n", gpu.adapter_name(), gpu.class, gpu.caps.f16, gpu.caps.subgroups, gpu.caps.packed_dot);
    let mut summary = serde_json::Map::new();

    // 1. One ViT-Base MLP layer in every weight format.
    let (m, k, n) = (197, 768, 3072);
    let w = synthetic(n * k, 1, 0.05);
    let bias = synthetic(n, 2, 0.1);
    let x = synthetic(m * k, 3, 1.0);
    let f32_layer = PackedMatrix::quantize(&w, n, k, WeightFormat::F32)?;
    let exact = linear_reference(&f32_layer, Some(&bias), &x, m, Some(Activation::Gelu));
    let xt = Tensor::from_f32(gpu, &[m, k], &x)?;
    let out = Tensor::zeros(gpu, &[m, n], DType::F32)?;
    println!("ViT-B MLP fc1 ({m} tokens × {k} → {n}, GELU) per weight format:");
    println!("{:<10} {:>9} {:>9} {:>12} {:>13}", "format", "size MB", "GEMM ms", "SQNR vs f32", "GPU vs CPU");
    let mut rows = Vec::new();
    for fmt in WeightFormat::all() {
        let packed = PackedMatrix::quantize(&w, n, k, fmt)?;
        let layer = QLinear::new(gpu, &packed, Some(&bias))?;
        let (ms, _) = gpu.time_step(5, |enc| linear(gpu, enc, &layer, &xt, &out, Some(Activation::Gelu)))?;
        let got = out.to_vec_f32(gpu)?;
        let reference = linear_reference(&packed, Some(&bias), &x, m, Some(Activation::Gelu));
        let self_check = nmse(&got, &reference);
        let sqnr = sqnr_db(&got, &exact);
        anyhow::ensure!(self_check <= 5e-4, "{}: GPU disagrees with the CPU reference (NMSE {self_check:.2e})", fmt.name());
        println!("{:<10} {:>9.2} {:>9.3} {:>9.1} dB {:>13.1e}", fmt.name(), packed.bytes() as f64 / 1e6, ms, sqnr, self_check);
        rows.push(serde_json::json!({"format": fmt.name(), "bytes": packed.bytes(), "ms": ms, "sqnr_db": sqnr, "nmse_vs_cpu": self_check}));
    }
    summary.insert("mlp".into(), rows.into());

    // 2. ViT-B attention: f32 vs SageAttention (int8 Q·Kᵀ).
    let p = AttentionParams::new(1, 197, 12, 64);
    let qkv = attention::realistic_qkv(&p, 7);
    let qkv_t = Tensor::from_f32(gpu, &p.qkv_shape(), &qkv)?;
    let out_f32 = Tensor::zeros(gpu, &p.out_shape(), DType::F32)?;
    let out_sage = Tensor::zeros(gpu, &p.out_shape(), DType::F32)?;
    let sage = SageOptions::default().effective(gpu);
    let (ms_f32, _) = gpu.time_step(5, |enc| attention::attention(gpu, enc, &qkv_t, &out_f32, p))?;
    let scratch = attention::SageScratch::new(gpu, p, sage)?;
    let (ms_sage, _) = gpu.time_step(5, |enc| attention::sage_attention_with(gpu, enc, &qkv_t, &out_sage, &scratch))?;
    let (a, b) = (out_f32.to_vec_f32(gpu)?, out_sage.to_vec_f32(gpu)?);
    let (cos, rl1) = (cosine(&b, &a), relative_l1(&b, &a));
    println!("\nViT-B attention (197 tokens × 12 heads × 64):");
    println!("  f32 {ms_f32:.3} ms; SageAttention int8 QK (P·V in {}) {ms_sage:.3} ms, cosine {cos:.6}, relative L1 {rl1:.4}", if sage.pv_f16 { "f16" } else { "f32" });
    summary.insert("attention".into(), serde_json::json!({"f32_ms": ms_f32, "sage_ms": ms_sage, "cosine": cos, "relative_l1": rl1}));

    // 3. LlamaGen-sized codebook search: 256 latents against 16384 l2-normalized 8-d codes.
    let (nv, kc, d) = (256, 16384, 8);
    let codes = synthetic(kc * d, 11, 1.0);
    let book = Codebook::new(gpu, &codes, kc, d, Metric::Cosine)?;
    let z = synthetic(nv * d, 12, 1.0);
    let zt = Tensor::from_f32(gpu, &[nv, d], &z)?;
    let ids = Tensor::zeros(gpu, &[nv], DType::U32)?;
    let (ms_vq, _) = gpu.time_step(5, |enc| book.search(gpu, enc, &zt, &ids, None))?;
    let got = ids.to_vec_u32(gpu)?;
    let (want, _) = vq::reference::search_reference(Metric::Cosine, &z, &vq::reference::normalize_rows(&codes, d), d);
    let agree = got.iter().zip(&want).filter(|(a, b)| a == b).count();
    println!("\nVQ search ({nv} latents × {kc} codes × {d} dims, cosine): {ms_vq:.3} ms, {agree}/{nv} indices equal to the CPU's");
    summary.insert("vq".into(), serde_json::json!({"ms": ms_vq, "agree": agree, "total": nv}));

    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("demo.json");
    std::fs::write(&path, serde_json::to_string_pretty(&serde_json::Value::Object(summary))?)?;
    println!("\nwrote {} in {:.1} s", path.display(), start.elapsed().as_secs_f64());
    Ok(())
}
