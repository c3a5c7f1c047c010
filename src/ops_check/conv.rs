//! Convolutions: every weight format, the geometries of the models (3×3, strided, 1×1, taming's
//! asymmetric Downsample padding, patch embedding) and each GPU workgroup tile.

use super::{dims, random, run_graph, Case};
use crate::gpu::AdapterClass;
use crate::kernels::conv::{conv2d_reference_padded, to_tokens, Conv2d, Padding};
use crate::kernels::launch;
use crate::kernels::matmul::Variant;
use crate::formats::{PackedMatrix, WeightFormat};
use crate::Gpu;

#[derive(Clone, Copy)]
struct Geometry {
    shape: [usize; 4],
    cout: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    /// Written as tokens [B, Ho·Wo, Cout] (`conv_to_tokens`, ViT patch embedding).
    tokens: bool,
}

impl Geometry {
    fn new(shape: [usize; 4], cout: usize, kernel: usize, stride: usize, pad: usize) -> Geometry {
        Geometry { shape, cout, kernel, stride, padding: Padding::same(pad), tokens: false }
    }

    fn name(&self) -> String {
        let p = self.padding;
        let pad = if p == Padding::same(p.top) { format!("p{}", p.top) } else { format!("p{},{},{},{}", p.top, p.left, p.bottom, p.right) };
        format!("{}->{} k{} s{} {pad}", dims(&self.shape), self.cout, self.kernel, self.stride)
    }

    fn pixels(&self) -> usize {
        let [b, _, h, w] = self.shape;
        let (ho, wo) = self.padding.output_size(h, w, (self.kernel, self.kernel), self.stride).unwrap_or((0, 0));
        b * ho * wo
    }
}

/// The kernel `Conv2d` runs on `gpu` for this many output pixels: the launch table's workgroup
/// tile on GPU rows, the register-tiled CPU kernel otherwise.
fn variant(gpu: &Gpu, pixels: usize) -> String {
    let plan = launch::for_class(gpu.class).linear;
    match plan.for_rows(pixels.max(plan.gemv_max_m + 1)) {
        v @ Variant::GemmWorkgroup { .. } => format!("conv {}", v.name()),
        _ if gpu.class == AdapterClass::Cpu => "conv cpu tiles".into(),
        v => format!("conv {}", v.name()),
    }
}

fn case(gpu: &Gpu, g: Geometry, fmt: WeightFormat) -> Case {
    let check = Box::new(move |gpu: &Gpu| {
        let [b, cin, h, w] = g.shape;
        let k = (g.kernel, g.kernel);
        let cols = cin * g.kernel * g.kernel;
        let x = random(b * cin * h * w, 1 + cols as u64, 1.0);
        let bias = random(g.cout, 3, 0.5);
        let packed = PackedMatrix::quantize(&random(g.cout * cols, 2 + g.cout as u64, 0.3), g.cout, cols, fmt)?;
        let conv = Conv2d::with_padding(gpu, &packed, Some(&bias), k, g.stride, g.padding)?;
        let got = run_graph(gpu, &[(&g.shape, &x)], |gr, v| if g.tokens { gr.conv_to_tokens("conv", &conv, v[0]) } else { gr.conv2d("conv", &conv, v[0]) })?;
        let mut want = conv2d_reference_padded(&x, g.shape, &packed.dequantize(), &bias, k, g.stride, g.padding);
        if g.tokens {
            want = to_tokens(&want, b, g.cout, g.pixels() / b);
        }
        Ok((got, want))
    });
    let op = if g.tokens { "conv_to_tokens" } else { "conv2d" };
    Case::new(op, g.name(), variant(gpu, g.pixels()), fmt.name(), check)
}

pub fn cases(gpu: &Gpu) -> Vec<Case> {
    let mut cases = Vec::new();
    // Cin·9 = 117 columns: a partial last scale group and word for every format; 63 output
    // pixels (the GPU rows' small tile).
    let every_format = Geometry::new([1, 13, 7, 9], 11, 3, 1, 1);
    for fmt in WeightFormat::all() {
        cases.push(case(gpu, every_format, fmt));
    }
    let q4 = WeightFormat::Q4 { group: 32, zero_point: true };
    let geometries = [
        // 126 pixels: the GPU rows' medium tile.
        Geometry::new([2, 5, 9, 7], 11, 3, 1, 1),
        Geometry::new([1, 6, 13, 11], 9, 3, 2, 1),
        Geometry::new([2, 7, 5, 6], 13, 1, 1, 0),
        // 1056 pixels: the discrete row's large tile.
        Geometry::new([1, 4, 32, 33], 6, 1, 1, 0),
        // taming's Downsample: pad right and bottom by one, 3×3 stride 2.
        Geometry { padding: Padding { top: 0, left: 0, bottom: 1, right: 1 }, ..Geometry::new([1, 5, 9, 8], 7, 3, 2, 0) },
        // ViT patch embedding: kernel = stride = patch, written as tokens.
        Geometry { tokens: true, ..Geometry::new([2, 3, 8, 12], 10, 4, 4, 0) },
    ];
    for g in geometries {
        cases.push(case(gpu, g, WeightFormat::F32));
        cases.push(case(gpu, g, q4));
    }
    cases
}
