//! The kernel library on its own: pack a Linear layer's weights in a low-bit format, run it on
//! the GPU, and compare with the CPU reference and with the f32 layer.
//!
//!     cargo run --release --example quantized_linear -- q4g32

use lowbit::gpu::{DType, Tensor};
use lowbit::kernels::elementwise::Activation;
use lowbit::kernels::matmul::{linear, linear_reference, QLinear};
use lowbit::metrics::{nmse, sqnr_db};
use lowbit::formats::{PackedMatrix, WeightFormat};
use lowbit::synthetic::uniform;
use lowbit::Gpu;

fn main() -> anyhow::Result<()> {
    let format = WeightFormat::parse(&std::env::args().nth(1).unwrap_or_else(|| "q4g32".into()))?;
    let (tokens, inputs, outputs) = (197, 768, 3072); // a ViT-B MLP fc1 over one image
    let weight = uniform(outputs * inputs, 1, 0.05);
    let bias = uniform(outputs, 2, 0.1);
    let x = uniform(tokens * inputs, 3, 1.0);

    let gpu = Gpu::new()?;
    let packed = PackedMatrix::quantize(&weight, outputs, inputs, format)?;
    let layer = QLinear::new(&gpu, &packed, Some(&bias))?; // stays packed on the GPU
    let x_gpu = Tensor::from_f32(&gpu, &[tokens, inputs], &x)?;
    let out = Tensor::zeros(&gpu, &[tokens, outputs], DType::F32)?;

    let mut enc = gpu.encoder();
    linear(&gpu, &mut enc, &layer, &x_gpu, &out, Some(Activation::Gelu))?;
    gpu.submit(enc)?;
    let got = out.to_vec_f32(&gpu)?;

    let same_weights = linear_reference(&packed, Some(&bias), &x, tokens, Some(Activation::Gelu));
    let f32_weights = PackedMatrix::quantize(&weight, outputs, inputs, WeightFormat::F32)?;
    let exact = linear_reference(&f32_weights, Some(&bias), &x, tokens, Some(Activation::Gelu));
    println!("{} on {}: {} bytes of weights ({:.2} bits each)", format.name(), gpu.adapter_name(), packed.bytes(), packed.bytes() as f64 * 8.0 / weight.len() as f64);
    println!("GPU vs CPU reference: NMSE {:.1e}", nmse(&got, &same_weights));
    println!("vs the f32 layer: SQNR {:.1} dB", sqnr_db(&got, &exact));
    Ok(())
}
