//! taming-transformers' VQGAN decoder (`VQModel.decode_code`), built from a checkpoint with
//! taming's key names and run as a planned graph:
//!
//! tokens [B, h, w] (or [B, S, h, w]) → the quantizer's lookup (`quantize.embedding` gather;
//! sub-codebooks concatenated, stages summed) → NCHW [B, embed_dim, h, w] →
//! post_quant_conv (1×1) → `decoder.`: conv_in → mid (ResnetBlock, AttnBlock, ResnetBlock) →
//! for each level from the deepest: num_res_blocks+1 ResnetBlocks (each followed by an
//! AttnBlock at the `attn_resolutions`), then nearest ×2 + conv except at level 0 →
//! GroupNorm + swish → conv_out → image [B, out_ch, h·2^(L−1), w·2^(L−1)] (raw, ≈[−1, 1]).

use std::path::Path;

use super::blocks::{attn_block, depth_to_space, load_mid, mid, resnet, to_nchw, AttnBlock, Flavor, Loader, Mid, ResnetBlock, GN_EPS, GROUPS};
use super::quantizer::Quantizer;
use super::{TokenGrid, VqganConfig};
use crate::gpu::{DType, Tensor};
use crate::graph::{Graph, Norm, Plan};
use crate::kernels::conv::Conv2d;
use crate::models::weights::Weights;
use crate::formats::WeightFormat;
use crate::{invalid, Gpu, Result};

struct Level {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
    upsample: Upsample,
    /// WeTok: the AdaptiveGroupNorm in front of the level's blocks.
    adaptive: Option<AdaptiveNorm>,
}

enum Upsample {
    /// Level 0: none.
    None,
    /// taming: nearest ×2, then the conv unless `resamp_with_conv: false`.
    Nearest(Option<Conv2d>),
    /// MAGVIT2's Upsampler: a conv to 4× the channels, then depth-to-space.
    DepthToSpace(Conv2d),
}

/// WeTok's AdaptiveGroupNorm: GroupNorm without affine, then per image
/// `gamma(std of the quantized latent) · x + beta(mean of it)`; the statistics come from the
/// tokens, so the affine is computed on the CPU per image (`style_norms`).
struct AdaptiveNorm {
    channels: usize,
    /// gamma.weight [C, z], gamma.bias [C], beta.weight [C, z], beta.bias [C].
    gamma: (Vec<f32>, Vec<f32>),
    beta: (Vec<f32>, Vec<f32>),
}

pub struct VqganDecoder {
    pub config: VqganConfig,
    /// The packed format of every conv and Linear.
    pub format: WeightFormat,
    pub quantizer: Quantizer,
    /// None in the MAGVIT2-style networks, whose decoder takes the codes as they are.
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    /// taming and LlamaGen: ResnetBlock, AttnBlock, ResnetBlock; MAGVIT2: num_res_blocks
    /// ResnetBlocks.
    mid: Vec<Mid>,
    /// Indexed like taming's `decoder.up[level]` (level 0 = full resolution).
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv2d,
}

impl VqganDecoder {
    /// Builds the decoder from checkpoint tensors (taming's `VQModel` state dict; encoder and
    /// loss tensors are ignored), packing conv and Linear weights in `format`
    /// (`WeightFormat::F32` reproduces taming's numbers).
    pub fn new(gpu: &Gpu, config: &VqganConfig, w: &Weights, format: WeightFormat) -> Result<VqganDecoder> {
        let c = config;
        let dd = &c.ddconfig;
        let f = c.flavor;
        let l = Loader { gpu, w, format, biased: !f.magvit() };
        let quantizer = super::tokenizers::load_quantizer(gpu, c, w)?;
        let post_quant_conv = if f.magvit() {
            if quantizer.dim() != dd.z_channels {
                invalid!("config: codes of {} values, but the decoder (no post_quant_conv) takes z_channels = {}", quantizer.dim(), dd.z_channels);
            }
            None
        } else {
            Some(l.conv("post_quant_conv", quantizer.dim(), dd.z_channels, 1)?)
        };
        let levels = dd.ch_mult.len();
        let mut ch = c.level_channels(levels - 1);
        let conv_in = l.conv("decoder.conv_in", dd.z_channels, ch, 3)?;
        let mid = load_mid(&l, f, "decoder", ch, dd.num_res_blocks)?;
        let mut up: Vec<Level> = Vec::with_capacity(levels);
        let mut res = c.latent_resolution();
        // taming and LlamaGen have one block more per decoder level than per encoder level.
        let blocks_per_level = if f.magvit() { dd.num_res_blocks } else { dd.num_res_blocks + 1 };
        for level in (0..levels).rev() {
            let p = f.level("decoder", level, levels);
            let out = c.level_channels(level);
            let adaptive = if f == Flavor::WeTok { Some(load_adaptive(w, &format!("decoder.adaptive.{level}"), ch, dd.z_channels)?) } else { None };
            let mut blocks = Vec::new();
            let mut attns = Vec::new();
            for i in 0..blocks_per_level {
                blocks.push(l.resnet(&format!("{p}.{}.{i}", f.blocks()), ch, out)?);
                ch = out;
                if dd.attn_resolutions.contains(&res) {
                    attns.push(l.attn(&format!("{p}.attn.{i}"), ch)?);
                }
            }
            // Blocks the config does not account for mean the config is for another model.
            for extra in [format!("{p}.{}.{blocks_per_level}.norm1.weight", f.blocks()), format!("{p}.attn.{}.norm.weight", attns.len())] {
                if w.contains(&extra) {
                    invalid!("checkpoint {} has {extra}, which the config (num_res_blocks, attn_resolutions) does not describe", w.source);
                }
            }
            let upsample = if level == 0 {
                Upsample::None
            } else if f.magvit() {
                res *= 2;
                Upsample::DepthToSpace(l.conv(&format!("{p}.upsample.conv1"), ch, 4 * ch, 3)?)
            } else {
                res *= 2;
                let key = format!("{p}.upsample.conv");
                if !dd.resamp_with_conv && w.contains(&format!("{key}.weight")) {
                    invalid!("config says resamp_with_conv: false (upsampling without a conv), but checkpoint {} has {key}.weight: set resamp_with_conv: true", w.source);
                }
                Upsample::Nearest(if dd.resamp_with_conv { Some(l.conv(&key, ch, ch, 3)?) } else { None })
            };
            up.insert(0, Level { blocks, attns, upsample, adaptive });
        }
        // One level more than ch_mult describes: taming numbers it `levels`, LlamaGen (counting
        // from the deepest) too, which is level 0 of a model one level deeper.
        let extra = match f {
            Flavor::LlamaGen => f.level("decoder", 0, levels + 1),
            _ => f.level("decoder", levels, levels + 1),
        };
        if w.contains(&format!("{extra}.{}.0.norm1.weight", f.blocks())) {
            invalid!("checkpoint {} has more than the configured {levels} decoder levels (ch_mult)", w.source);
        }
        let norm_out = l.norm("decoder.norm_out", ch)?;
        let conv_out = l.conv("decoder.conv_out", ch, dd.out_ch, 3)?;
        Ok(VqganDecoder { config: c.clone(), format, quantizer, post_quant_conv, conv_in, mid, up, norm_out, conv_out })
    }

    /// Loads `path`: a folder with `model.safetensors` and `config.yaml`, or a `.safetensors`
    /// file with `config.yaml` beside it; `config` overrides where the config comes from.
    pub fn from_pretrained(gpu: &Gpu, path: &Path, config: Option<&Path>, format: WeightFormat) -> Result<VqganDecoder> {
        let (weights_path, config_path) = VqganConfig::resolve(path, config)?;
        let cfg = VqganConfig::load(&config_path)?;
        let weights = Weights::load(&weights_path)?;
        Self::new(gpu, &cfg, &weights, format)
    }

    /// Image shape [B, out_ch, H, W] for a token grid [B, h, w].
    pub fn image_shape(&self, tokens: [usize; 3]) -> [usize; 4] {
        let s = self.config.upscale();
        [tokens[0], self.config.ddconfig.out_ch, tokens[1] * s, tokens[2] * s]
    }

    /// Checks a token grid against the quantizer (ids per position, each id in its
    /// sub-codebook) and returns its ids position-major ([B·h·w, S], the plan's input).
    pub fn checked_ids(&self, tokens: &TokenGrid) -> Result<Vec<u32>> {
        tokens.check_codebooks(&self.quantizer.codebook_sizes(), "model")?;
        Ok(tokens.position_major())
    }

    /// Decodes a token grid; ids are range-checked on the CPU before anything runs. Batches
    /// whose activations would outgrow a storage binding run a few images per pass.
    pub fn decode(&self, gpu: &Gpu, tokens: &TokenGrid) -> Result<Tensor> {
        let per_image = self.activation_bytes(tokens.height, tokens.width);
        let fit = (gpu.max_binding_size() / per_image.max(1) as u64) as usize;
        self.decode_in_passes(gpu, tokens, fit.max(1))
    }

    /// `decode` with at most `images_per_pass` images per planned run; every pass but a
    /// smaller last one reuses the same plan (buffers and bind groups). WeTok's adaptive norms
    /// depend on each image's tokens: its images are planned one at a time.
    pub fn decode_in_passes(&self, gpu: &Gpu, tokens: &TokenGrid, images_per_pass: usize) -> Result<Tensor> {
        let ids = self.checked_ids(tokens)?;
        if images_per_pass == 0 {
            invalid!("vqgan decode: images_per_pass must be at least 1");
        }
        let [b, h, w] = tokens.shape();
        let hw = h * w * self.quantizer.codes_per_position();
        let styled = self.config.flavor == Flavor::WeTok;
        let per_pass = if styled { 1 } else { images_per_pass.min(b) };
        let plan_for = |first: usize, n: usize| -> Result<Plan> {
            let style = if styled { Some(self.style_norms(gpu, &ids[first * hw..(first + n) * hw], h * w)?) } else { None };
            Plan::new(gpu, self.graph_with(n, h, w, style.as_deref())?)
        };
        if per_pass == b {
            let plan = plan_for(0, b)?;
            plan.set_input(gpu, 0, &ids)?;
            return Ok(plan.run(gpu)?.remove(0));
        }
        let image = Tensor::zeros(gpu, &self.image_shape(tokens.shape()), DType::F32)?;
        let image_bytes = (image.numel() / b * 4) as u64;
        let plan = if styled { None } else { Some(plan_for(0, per_pass)?) };
        let mut last: Option<Plan> = None;
        for first in (0..b).step_by(per_pass) {
            let n = per_pass.min(b - first);
            let plan = match &plan {
                Some(p) if n == per_pass => p,
                _ => last.insert(plan_for(first, n)?),
            };
            plan.set_input(gpu, 0, &ids[first * hw..(first + n) * hw])?;
            let mut enc = gpu.encoder();
            let part = plan.record(gpu, &mut enc)?.remove(0);
            enc.raw().copy_buffer_to_buffer(&part.buffer, 0, &image.buffer, first as u64 * image_bytes, Some(n as u64 * image_bytes));
            gpu.submit(enc)?;
            // The next pass rewrites the plan's input: wait until this one has read it.
            gpu.wait()?;
        }
        Ok(image)
    }

    /// WeTok: each level's AdaptiveGroupNorm affine for one image whose ids (position-major,
    /// `positions` of them) are `ids`: gamma(std) and beta(mean) of the quantized latent's
    /// channels over the positions (std from the unbiased variance plus eps, as torch.var).
    fn style_norms(&self, gpu: &Gpu, ids: &[u32], positions: usize) -> Result<Vec<Norm>> {
        let Quantizer::Factorized(books) = &self.quantizer else { invalid!("adaptive norms need a lookup-free quantizer") };
        if positions < 2 {
            invalid!("WeTok decode: a 1×1 token grid has no variance for the adaptive norms (torch gives NaN)");
        }
        let (s, bits) = (books.books.len(), books.d());
        let z = s * bits;
        let (mut mean, mut std) = (vec![0f64; z], vec![0f64; z]);
        for ch in 0..z {
            let (group, bit) = (ch / bits, ch % bits);
            let v: Vec<f64> = (0..positions).map(|p| if ids[p * s + group] >> bit & 1 == 1 { 1.0 } else { -1.0 }).collect();
            let m = v.iter().sum::<f64>() / positions as f64;
            let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (positions - 1) as f64;
            mean[ch] = m;
            std[ch] = (var + GN_EPS as f64).sqrt();
        }
        let linear = |(weight, bias): &(Vec<f32>, Vec<f32>), x: &[f64]| -> Vec<f32> {
            weight.chunks(z).zip(bias).map(|(row, &b)| (row.iter().zip(x).map(|(&w, &v)| w as f64 * v).sum::<f64>() + b as f64) as f32).collect()
        };
        let mut norms = Vec::new();
        for level in self.up.iter().rev() {
            let a = level.adaptive.as_ref().expect("WeTok levels have adaptive norms");
            let weight = Tensor::from_f32(gpu, &[a.channels], &linear(&a.gamma, &std))?;
            let bias = Tensor::from_f32(gpu, &[a.channels], &linear(&a.beta, &mean))?;
            norms.push(Norm { weight, bias });
        }
        Ok(norms)
    }

    /// The decode of `batch` token grids of `h`×`w`, planned: input 0 is the ids (u32
    /// [B, h·w, S], position-major, range-checked by the caller: `checked_ids`), output 0 the
    /// image.
    pub fn plan(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<Plan> {
        Plan::new(gpu, self.graph(batch, h, w)?)
    }

    /// The decode as a graph; node names are the checkpoint's.
    pub fn graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        if self.config.flavor == Flavor::WeTok {
            invalid!("WeTok's decoder depends on each image's tokens (adaptive norms): decode with `decode`, not a reusable plan");
        }
        self.graph_with(batch, h, w, None)
    }

    /// The decode's nodes for timing and memory planning (`lowbit info`, `bench model`,
    /// `decode --profile`): `graph`, except that WeTok's adaptive norms, which depend on each
    /// image's tokens, get a placeholder affine (the same nodes and sizes, not its values).
    pub fn timing_graph(&self, gpu: &Gpu, batch: usize, h: usize, w: usize) -> Result<Graph> {
        if self.config.flavor != Flavor::WeTok {
            return self.graph(batch, h, w);
        }
        let norms = self
            .up
            .iter()
            .rev()
            .map(|level| {
                let c = level.adaptive.as_ref().map_or(1, |a| a.channels);
                Ok(Norm { weight: Tensor::from_f32(gpu, &[c], &vec![1.0; c])?, bias: Tensor::zeros(gpu, &[c], DType::F32)? })
            })
            .collect::<Result<Vec<_>>>()?;
        self.graph_with(batch, h, w, Some(&norms))
    }

    /// The graph with WeTok's per-level adaptive norms (deepest level first) for its one image.
    fn graph_with(&self, batch: usize, h: usize, w: usize, style: Option<&[Norm]>) -> Result<Graph> {
        let mut g = Graph::new();
        let ids = g.input(&[batch, h * w, self.quantizer.codes_per_position()], DType::U32);
        let codes = self.quantizer.lookup(&mut g, ids)?;
        let mut z = to_nchw(&mut g, "quantize", codes, (h, w))?;
        if let Some(conv) = &self.post_quant_conv {
            z = g.conv2d("post_quant_conv", conv, z)?;
        }
        let x = g.conv2d("decoder.conv_in", &self.conv_in, z)?;
        let mut x = mid(&mut g, &self.mid, x)?;
        let levels = self.up.len();
        for (l, level) in self.up.iter().enumerate().rev() {
            if let Some(norms) = style {
                x = g.group_norm(&format!("decoder.adaptive.{l}"), x, &norms[levels - 1 - l], GROUPS, GN_EPS, false)?;
            }
            for (i, block) in level.blocks.iter().enumerate() {
                x = resnet(&mut g, block, x)?;
                if let Some(a) = level.attns.get(i) {
                    x = attn_block(&mut g, a, x)?;
                }
            }
            let p = self.config.flavor.level("decoder", l, levels);
            match &level.upsample {
                Upsample::None => {}
                Upsample::Nearest(conv) => {
                    x = g.upsample2x(&format!("{p}.upsample"), x)?;
                    if let Some(conv) = conv {
                        x = g.conv2d(&format!("{p}.upsample.conv"), conv, x)?;
                    }
                }
                Upsample::DepthToSpace(conv) => {
                    x = g.conv2d(&format!("{p}.upsample.conv1"), conv, x)?;
                    x = depth_to_space(&mut g, &format!("{p}.upsample"), x)?;
                }
            }
        }
        let x = g.group_norm("decoder.norm_out", x, &self.norm_out, GROUPS, GN_EPS, true)?;
        let image = g.conv2d("decoder.conv_out", &self.conv_out, x)?;
        g.output(image);
        Ok(g)
    }

    /// Bytes of the largest activation tensor one image needs for an `h`×`w` token grid (each
    /// tensor must fit one storage binding).
    pub fn activation_bytes(&self, h: usize, w: usize) -> usize {
        let c = &self.config;
        let levels = self.up.len();
        let (top, latent) = (c.level_channels(levels - 1), h * w);
        // Codes and z at the latent size; the mid AttnBlock's qkv [T, 3C]; a depth-to-space
        // conv's 4C channels take as many bytes as the level's output below.
        let mut most = latent * self.quantizer.dim().max(c.ddconfig.z_channels).max(3 * top);
        for (l, level) in self.up.iter().enumerate() {
            let pixels = latent << (2 * (levels - 1 - l));
            // A level's first block reads the channels of the level above (upsampled here).
            let channels = c.level_channels(l).max(c.level_channels((l + 1).min(levels - 1)));
            let attn = if level.attns.is_empty() { 1 } else { 3 };
            most = most.max(pixels * channels * attn);
        }
        4 * most
    }
}

/// WeTok's `decoder.adaptive.{level}` (AdaptiveGroupNorm(z_channels, channels)).
fn load_adaptive(w: &Weights, prefix: &str, channels: usize, z: usize) -> Result<AdaptiveNorm> {
    let v = w.pp(prefix);
    let linear = |name: &str| -> Result<(Vec<f32>, Vec<f32>)> { Ok((v.get(&format!("{name}.weight"), &[channels, z])?.to_vec(), v.get(&format!("{name}.bias"), &[channels])?.to_vec())) };
    Ok(AdaptiveNorm { channels, gamma: linear("gamma")?, beta: linear("beta")? })
}
