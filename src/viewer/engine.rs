//! What the viewer computes, without any UI: models loaded per weight recipe on first use,
//! and one function per action (generate, decode, round trip, classify, profile). Everything
//! returns plain images and numbers so the UI and the screenshot mode share it.
//!
//! Actions that read results back come in two forms: `generate_job`, `decode_job`,
//! `roundtrip_job` and `classify_job` load what they need, then return a `'static` future that
//! owns (shared) models, which the browser awaits across frames; `generate`, `decode_digits`,
//! `roundtrip` and `classify` are these futures run to completion.
//! Models load from the file system, or from bytes fetched over HTTP (`add_fetched`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use image::{Rgb, RgbImage};

use super::rollout::{class_token_rollout, layer_attention};

mod recovery;
use crate::gpu::Tensor;
use crate::graph::{NodeTime, Plan};
use crate::models::images::{rgb_to_signed_chw, signed_chw_to_rgb};
use crate::models::prior::{Prior, PriorConfig};
use crate::models::sampling::generate_classes_async;
use crate::models::vqgan::{TokenGrid, VqganConfig, VqganDecoder, VqganEncoder};
use crate::models::{load_image, preprocess, Classifier, PreprocessConfig, VisionTransformer, VitConfig, WeightSummary, Weights};
use crate::formats::WeightFormat;
use crate::Gpu;

/// The photograph's center crop side for the round trip: photo-vqgan decodes 128² in well under
/// a second on lavapipe, the full 256² takes several.
pub const PHOTO_SIDE: usize = 128;

/// A weight recipe: a format every shipped model is packed in when loaded, a packed
/// checkpoint folder written by `lowbit quantize` that replaces one shipped model, or
/// digits-vit with a format per layer chosen by hand (mixed precision in the viewer).
#[derive(Clone, Debug, PartialEq)]
pub struct Recipe {
    pub name: String,
    pub format: WeightFormat,
    /// The quantized folder standing in for one model (the others stay f32).
    pub folder: Option<(ModelName, PathBuf)>,
    /// digits-vit's matrices packed per layer (round to nearest) from the f32 model.
    pub layers: Option<Vec<(String, WeightFormat)>>,
}

impl Recipe {
    pub fn format(format: WeightFormat) -> Recipe {
        Recipe { name: format.name(), format, folder: None, layers: None }
    }

    /// digits-vit with these formats per matrix (the rest of the models in f32). The name
    /// keys the loaded models, so it encodes the whole choice.
    pub fn per_layer(layers: Vec<(String, WeightFormat)>) -> Recipe {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (key, format) in &layers {
            (key, format.name()).hash(&mut h);
        }
        Recipe { name: format!("per layer #{:04x}", h.finish() & 0xffff), format: WeightFormat::F32, folder: None, layers: Some(layers) }
    }

    pub fn f32() -> Recipe {
        Recipe::format(WeightFormat::F32)
    }
}

/// A weight matrix of a model: (checkpoint key, rows, columns, format under a recipe).
pub type Matrix = (String, usize, usize, WeightFormat);

/// The models of one weight recipe, each loaded when first needed.
#[derive(Default)]
struct ModelSet {
    vit: Option<VisionTransformer>,
    /// Shared with running jobs (`generate_job`), which may outlive a frame in the browser.
    prior: Option<Arc<Prior>>,
    digits: Option<Arc<VqganDecoder>>,
    /// The photo tokenizers (photo-vqgan, photo-rqvae) loaded so far.
    photo: HashMap<ModelName, PhotoTokenizer>,
}

/// One photo tokenizer's two halves.
struct PhotoTokenizer {
    encoder: VqganEncoder,
    decoder: Arc<VqganDecoder>,
}

/// Which shipped model a measurement refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModelName {
    DigitsVit,
    DigitsPrior,
    DigitsVqgan,
    PhotoVqgan,
    /// The residual (two-stage) photo tokenizer, the Round-trip tab's other choice.
    PhotoRqvae,
}

impl ModelName {
    pub const ALL: [ModelName; 5] = [ModelName::DigitsVit, ModelName::DigitsPrior, ModelName::DigitsVqgan, ModelName::PhotoVqgan, ModelName::PhotoRqvae];
    /// What the Round-trip tab can encode photographs with.
    pub const PHOTO_TOKENIZERS: [ModelName; 2] = [ModelName::PhotoVqgan, ModelName::PhotoRqvae];

    pub fn dir(self) -> &'static str {
        match self {
            ModelName::DigitsVit => "digits-vit",
            ModelName::DigitsPrior => "digits-prior",
            ModelName::DigitsVqgan => "digits-vqgan",
            ModelName::PhotoVqgan => "photo-vqgan",
            ModelName::PhotoRqvae => "photo-rqvae",
        }
    }

    /// The config's file name in the model's folder.
    pub fn config_file(self) -> &'static str {
        match self {
            ModelName::DigitsVit | ModelName::DigitsPrior | ModelName::PhotoRqvae => "config.json",
            ModelName::DigitsVqgan | ModelName::PhotoVqgan => "config.yaml",
        }
    }

    /// The files that load the model, relative to the assets folder (what the browser fetches).
    pub fn files(self) -> [String; 2] {
        [self.config_file(), "model.safetensors"].map(|f| format!("models/{}/{f}", self.dir()))
    }
}

/// A generated or reconstructed image with the tokens it was decoded from.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub tokens: TokenGrid,
    pub image: RgbImage,
}

/// A round trip's result: the crop the tokenizer saw, its reconstruction, and what `lowbit
/// compress` would make of it.
#[derive(Clone, Debug)]
pub struct RoundTrip {
    pub original: RgbImage,
    pub out: Decoded,
    /// Bits per pixel of the tokens entropy-coded as `lowbit compress` codes them without a
    /// prior (the .lbt header excluded).
    pub bpp: f64,
    /// Of the 8-bit reconstruction against the 8-bit crop (infinite when they are equal).
    pub psnr_db: f64,
}

/// What classify produced for one image.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The image as the network saw it (preprocessed, then mapped back to RGB).
    pub input: RgbImage,
    pub logits: Vec<f32>,
    /// Attention rollout per patch, [grid, grid] row-major, largest = 1.
    pub rollout: Vec<f32>,
    pub grid: usize,
}

impl Classified {
    pub fn probabilities(&self) -> Vec<f32> {
        softmax(&self.logits)
    }

    /// (class, probability), most probable first.
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut p: Vec<(usize, f32)> = self.probabilities().into_iter().enumerate().collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1));
        p.truncate(k);
        p
    }
}

pub struct Engine {
    /// Shared with running jobs, like the models.
    pub gpu: Arc<Gpu>,
    pub assets: PathBuf,
    /// Files fetched over HTTP, by path relative to `assets`: read instead of the file system.
    fetched: HashMap<PathBuf, Arc<Vec<u8>>>,
    models: HashMap<String, ModelSet>,
    /// What each weights file holds (parsed once: the precision panel asks every frame).
    summaries: HashMap<PathBuf, WeightSummary>,
    /// A classifier folder opened in the Classify tab (any timm family lowbit loads, run as
    /// stored): used instead of digits-vit until closed.
    classifier: Option<(PathBuf, Arc<Classifier>)>,
    /// How a replacement device is opened after a loss (see `recovery`).
    pub gpu_options: crate::GpuOptions,
    /// Devices opened to replace lost ones so far.
    pub recoveries: u32,
}

impl Engine {
    pub fn new(gpu: Gpu, assets: PathBuf) -> Engine {
        Engine {
            gpu: Arc::new(gpu),
            assets,
            fetched: HashMap::new(),
            models: HashMap::new(),
            summaries: HashMap::new(),
            classifier: None,
            gpu_options: crate::GpuOptions::from_env(),
            recoveries: 0,
        }
    }

    /// Makes `bytes` the content of `relative` (a path under `assets`, e.g. one of
    /// `ModelName::files`): models whose files are all fetched load from these bytes.
    pub fn add_fetched(&mut self, relative: &str, bytes: Vec<u8>) {
        self.fetched.insert(PathBuf::from(relative), Arc::new(bytes));
    }

    /// The bytes of `path`: fetched ones first, else from the file system.
    fn file_bytes(&self, path: &Path) -> anyhow::Result<Arc<Vec<u8>>> {
        if let Some(bytes) = path.strip_prefix(&self.assets).ok().and_then(|rel| self.fetched.get(rel)) {
            return Ok(bytes.clone());
        }
        if cfg!(target_arch = "wasm32") {
            bail!("{}: not among the files the page fetched (the models and the samples)", path.display());
        }
        Ok(Arc::new(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?))
    }

    /// Both files of `m` in `dir` when they were fetched: (config text, weights).
    fn fetched_model(&self, m: ModelName, dir: &Path) -> anyhow::Result<Option<(String, Weights)>> {
        let rel = |f: &str| dir.join(f).strip_prefix(&self.assets).ok().map(Path::to_path_buf);
        let get = |f: &str| rel(f).and_then(|r| self.fetched.get(&r).cloned());
        let (Some(config), Some(weights)) = (get(m.config_file()), get("model.safetensors")) else { return Ok(None) };
        let config = String::from_utf8(config.to_vec()).with_context(|| format!("{}: not UTF-8 text", m.config_file()))?;
        let source = dir.join("model.safetensors").display().to_string();
        Ok(Some((config, Weights::from_bytes(&weights, &source)?)))
    }

    fn model_dir(&self, m: ModelName, recipe: &Recipe) -> PathBuf {
        match &recipe.folder {
            Some((which, dir)) if *which == m => dir.clone(),
            _ => self.assets.join("models").join(m.dir()),
        }
    }

    /// f32, q8 and q4g32, then every folder in `assets/models` named `<shipped model>-<suffix>`
    /// whose weights `lowbit quantize` packed (e.g. `digits-vit-w4a16`).
    pub fn recipes(&self) -> Vec<Recipe> {
        let mut out: Vec<Recipe> = ["f32", "q8", "q4g32"].iter().map(|n| Recipe::format(WeightFormat::parse(n).expect("built-in format names parse"))).collect();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.assets.join("models"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
            .unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let Some(m) = ModelName::ALL.into_iter().find(|m| name.starts_with(&format!("{}-", m.dir()))) else { continue };
            let quantized = Weights::load(&dir.join("model.safetensors")).and_then(|w| WeightSummary::new(&w)).is_ok_and(|s| s.is_quantized());
            if quantized {
                out.push(Recipe { name, format: WeightFormat::F32, folder: Some((m, dir)), layers: None });
            }
        }
        out
    }

    /// The sample images shipped in `assets/samples` (or fetched there) whose names start
    /// with `prefix`, sorted.
    pub fn samples(&self, prefix: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.assets.join("samples"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        out.extend(self.fetched.keys().filter(|k| k.starts_with("samples")).map(|k| self.assets.join(k)));
        out.dedup();
        out.retain(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with(prefix) && name.ends_with(".png")
        });
        out.sort();
        out
    }

    fn set(&mut self, recipe: &Recipe) -> &mut ModelSet {
        self.models.entry(recipe.name.clone()).or_default()
    }

    /// Loads what `need` lists for `recipe` (a no-op once loaded).
    fn load(&mut self, recipe: &Recipe, need: &[ModelName]) -> anyhow::Result<(&Gpu, &ModelSet)> {
        let format = recipe.format;
        for &m in need {
            let dir = self.model_dir(m, recipe);
            let gpu = &self.gpu;
            let loaded = match m {
                ModelName::DigitsVit => self.models.get(&recipe.name).is_some_and(|s| s.vit.is_some()),
                ModelName::DigitsPrior => self.models.get(&recipe.name).is_some_and(|s| s.prior.is_some()),
                ModelName::DigitsVqgan => self.models.get(&recipe.name).is_some_and(|s| s.digits.is_some()),
                ModelName::PhotoVqgan | ModelName::PhotoRqvae => self.models.get(&recipe.name).is_some_and(|s| s.photo.contains_key(&m)),
            };
            if loaded {
                continue;
            }
            let what = || format!("loading {} ({})", dir.display(), recipe.name);
            if let (ModelName::DigitsVit, Some(layers)) = (m, &recipe.layers) {
                let (config, w) = self.per_layer_vit(layers).with_context(what)?;
                let vit = VisionTransformer::new(&self.gpu, &config, &w, WeightFormat::F32).with_context(what)?;
                self.set(recipe).vit = Some(vit);
                continue;
            }
            if let Some((config, w)) = self.fetched_model(m, &dir).with_context(what)? {
                let source = dir.join(m.config_file()).display().to_string();
                match m {
                    ModelName::DigitsVit => {
                        let vit = VitConfig::from_json(&config).and_then(|c| VisionTransformer::new(gpu, &c, &w, format)).with_context(what)?;
                        self.set(recipe).vit = Some(vit);
                    }
                    ModelName::DigitsPrior => {
                        let prior = PriorConfig::from_json(&config).and_then(|c| Prior::new(gpu, &c, &w, format)).with_context(what)?;
                        self.set(recipe).prior = Some(Arc::new(prior));
                    }
                    ModelName::DigitsVqgan => {
                        let dec = VqganConfig::parse(&config, &source).and_then(|c| VqganDecoder::new(gpu, &c, &w, format)).with_context(what)?;
                        self.set(recipe).digits = Some(Arc::new(dec));
                    }
                    ModelName::PhotoVqgan | ModelName::PhotoRqvae => {
                        let c = VqganConfig::parse(&config, &source).with_context(what)?;
                        let encoder = VqganEncoder::new(gpu, &c, &w, format).with_context(what)?;
                        let decoder = Arc::new(VqganDecoder::new(gpu, &c, &w, format).with_context(what)?);
                        self.set(recipe).photo.insert(m, PhotoTokenizer { encoder, decoder });
                    }
                }
                continue;
            }
            match m {
                ModelName::DigitsVit => {
                    let vit = VisionTransformer::from_pretrained(gpu, &dir, None, format).with_context(what)?;
                    self.set(recipe).vit = Some(vit);
                }
                ModelName::DigitsPrior => {
                    let prior = Prior::from_pretrained(gpu, &dir, format).with_context(what)?;
                    self.set(recipe).prior = Some(Arc::new(prior));
                }
                ModelName::DigitsVqgan => {
                    let dec = VqganDecoder::from_pretrained(gpu, &dir, None, format).with_context(what)?;
                    self.set(recipe).digits = Some(Arc::new(dec));
                }
                ModelName::PhotoVqgan | ModelName::PhotoRqvae => {
                    let encoder = VqganEncoder::from_pretrained(gpu, &dir, None, format).with_context(what)?;
                    let decoder = Arc::new(VqganDecoder::from_pretrained(gpu, &dir, None, format).with_context(what)?);
                    self.set(recipe).photo.insert(m, PhotoTokenizer { encoder, decoder });
                }
            }
        }
        Ok((&self.gpu, &self.models[&recipe.name]))
    }

    /// The shipped f32 digits-vit with `layers` packed in their formats.
    fn per_layer_vit(&self, layers: &[(String, WeightFormat)]) -> anyhow::Result<(VitConfig, Weights)> {
        let dir = self.assets.join("models").join(ModelName::DigitsVit.dir());
        let config_path = dir.join(ModelName::DigitsVit.config_file());
        let config = VitConfig::from_json(std::str::from_utf8(&self.file_bytes(&config_path)?).context("config.json: not UTF-8")?)?;
        let path = dir.join("model.safetensors");
        let mut w = Weights::from_bytes(&self.file_bytes(&path)?, &path.display().to_string())?;
        for (key, format) in layers.iter().filter(|(_, f)| *f != WeightFormat::F32) {
            let t = w.tensors.get(key).with_context(|| format!("digits-vit has no matrix {key}"))?;
            let (rows, cols) = (t.shape[0], t.shape[1..].iter().product());
            let packed = crate::formats::PackedMatrix::quantize(&t.data, rows, cols, *format).with_context(|| format!("{key} as {}", format.name()))?;
            crate::models::packed::insert(&mut w, key, &packed, "rtn (viewer)")?;
        }
        Ok((config, w))
    }

    /// `m`'s matrices with the format each has under `recipe`, and the
    /// parameters of everything else (which stays f32).
    fn matrices(&mut self, m: ModelName, recipe: &Recipe) -> anyhow::Result<(Vec<Matrix>, usize)> {
        let path = self.model_dir(m, recipe).join("model.safetensors");
        if !self.summaries.contains_key(&path) {
            let summary = WeightSummary::new(&Weights::from_bytes(&self.file_bytes(&path)?, &path.display().to_string())?)?;
            self.summaries.insert(path.clone(), summary);
        }
        let summary = &self.summaries[&path];
        let layers = recipe.layers.as_ref().filter(|_| m == ModelName::DigitsVit);
        let chosen = |key: &str| layers.and_then(|l| l.iter().find(|(k, _)| k == key).map(|(_, f)| *f));
        let matrices = summary.matrices.iter().map(|(key, r, c, stored)| (key.clone(), *r, *c, chosen(key).or(*stored).unwrap_or(recipe.format))).collect();
        Ok((matrices, summary.other_params))
    }

    /// digits-vit's matrices with their format under `recipe`.
    pub fn vit_layers(&mut self, recipe: &Recipe) -> anyhow::Result<Vec<Matrix>> {
        Ok(self.matrices(ModelName::DigitsVit, recipe)?.0)
    }

    /// Bytes of `m`'s weights under `recipe` (packed matrices plus the f32 rest).
    pub fn weight_bytes(&mut self, m: ModelName, recipe: &Recipe) -> anyhow::Result<usize> {
        let (matrices, other) = self.matrices(m, recipe)?;
        Ok(4 * other + matrices.iter().map(|&(_, r, c, f)| f.packed_bytes(r, c)).sum::<usize>())
    }

    /// A digit of `class` sampled by digits-prior (batch 1) and decoded by digits-vqgan.
    pub fn generate(&mut self, recipe: &Recipe, class: usize, seed: u64) -> anyhow::Result<Decoded> {
        Gpu::block_on(self.generate_job(recipe, class, seed)?)
    }

    /// `generate` as a future that owns what it uses: the models are loaded now, the
    /// sampling and decoding happen when it is awaited.
    pub fn generate_job(&mut self, recipe: &Recipe, class: usize, seed: u64) -> anyhow::Result<impl Future<Output = anyhow::Result<Decoded>> + 'static> {
        self.recover()?;
        let (_, set) = self.load(recipe, &[ModelName::DigitsPrior, ModelName::DigitsVqgan])?;
        let (prior, decoder, gpu) = (set.prior.clone().unwrap(), set.digits.clone().unwrap(), self.gpu.clone());
        Ok(async move {
            let opts = prior.config.sampling.unwrap_or_default();
            let tokens = generate_classes_async(&gpu, &prior, &[class], seed, &opts).await?;
            let image = decode_one(&gpu, &decoder, &tokens).await?;
            Ok(Decoded { tokens, image })
        })
    }

    /// digits-vqgan's image of a (possibly edited) token grid.
    pub fn decode_digits(&mut self, recipe: &Recipe, tokens: &TokenGrid) -> anyhow::Result<Decoded> {
        Gpu::block_on(self.decode_job(recipe, tokens)?)
    }

    /// `decode_digits` as a future that owns what it uses (see `generate_job`).
    pub fn decode_job(&mut self, recipe: &Recipe, tokens: &TokenGrid) -> anyhow::Result<impl Future<Output = anyhow::Result<Decoded>> + 'static> {
        self.recover()?;
        let (_, set) = self.load(recipe, &[ModelName::DigitsVqgan])?;
        let (decoder, gpu, tokens) = (set.digits.clone().unwrap(), self.gpu.clone(), tokens.clone());
        Ok(async move {
            let image = decode_one(&gpu, &decoder, &tokens).await?;
            Ok(Decoded { tokens, image })
        })
    }

    /// Codebook size of digits-vqgan (the range of an edited token).
    pub fn digits_codes(&mut self, recipe: &Recipe) -> anyhow::Result<usize> {
        Ok(self.load(recipe, &[ModelName::DigitsVqgan])?.1.digits.as_ref().unwrap().config.n_embed)
    }

    /// An image file (PNG or JPEG) as RGB: fetched bytes first, else from the file system.
    fn read_image(&self, path: &Path) -> anyhow::Result<RgbImage> {
        let fetched = self.fetched.keys().any(|k| path.strip_prefix(&self.assets).is_ok_and(|rel| rel == k));
        if !fetched && !cfg!(target_arch = "wasm32") {
            return Ok(load_image(path)?);
        }
        let bytes = self.file_bytes(path)?;
        Ok(crate::models::files::decode_image(&bytes, path)?)
    }

    /// Makes a file the user gave as bytes (dropped on the browser page, or chosen with its file
    /// picker: no path on disk) readable as an image under `assets/uploads/NAME`, the path the
    /// Round-trip and Classify actions then take.
    pub fn add_user_file(&mut self, name: &str, bytes: Vec<u8>) -> PathBuf {
        // Only the last path component, with no separators: the name is the page's to choose.
        let name: String = name.rsplit(['/', '\\']).next().unwrap_or("").chars().filter(|c| !c.is_control()).collect();
        let name = if name.is_empty() || name == "." || name == ".." { "image".to_string() } else { name };
        let relative = format!("uploads/{name}");
        // One upload kept at a time: a long session of dropped photos must not pile up.
        self.fetched.retain(|k, _| !k.starts_with("uploads"));
        self.add_fetched(&relative, bytes);
        self.assets.join(relative)
    }

    /// The center crop of `path` photo-vqgan sees, and its reconstruction.
    pub fn roundtrip(&mut self, recipe: &Recipe, tokenizer: ModelName, path: &Path) -> anyhow::Result<RoundTrip> {
        Gpu::block_on(self.roundtrip_job(recipe, tokenizer, path)?)
    }

    /// `roundtrip` as a future that owns what it uses (see `generate_job`): the photo is read,
    /// cropped and uploaded and the encoder planned now; encoding, reading the tokens back,
    /// decoding and reading the image back come later.
    pub fn roundtrip_job(&mut self, recipe: &Recipe, tokenizer: ModelName, path: &Path) -> anyhow::Result<impl Future<Output = anyhow::Result<RoundTrip>> + 'static> {
        self.recover()?;
        let photo = self.read_image(path)?;
        if !ModelName::PHOTO_TOKENIZERS.contains(&tokenizer) {
            bail!("{} is not a photo tokenizer (photo-vqgan, photo-rqvae)", tokenizer.dir());
        }
        let (gpu, set) = self.load(recipe, &[tokenizer])?;
        let t = &set.photo[&tokenizer];
        let (enc, dec) = (&t.encoder, t.decoder.clone());
        let (f, n_embed) = (enc.downscale(), enc.quantizer.largest_codebook());
        let side = |n: u32| (n as usize).min(PHOTO_SIDE) / f * f;
        let (h, w) = (side(photo.height()), side(photo.width()));
        if h == 0 || w == 0 {
            bail!("{} is {}×{}: {} needs at least {f}×{f} pixels", path.display(), photo.width(), photo.height(), tokenizer.dir());
        }
        let pixels = rgb_to_signed_chw(&photo, h, w);
        let input = Tensor::from_f32(gpu, &[1, 3, h, w], &pixels)?;
        // `VqganEncoder::encode` without its blocking readback of the ids.
        let plan = enc.plan(gpu, 1, h, w)?;
        let dims = enc.quantizer.token_dims(1, h / f, w / f);
        let gpu = self.gpu.clone();
        Ok(async move {
            let ids = plan.run_with(&gpu, &[&input])?.remove(0).to_vec_u32_async(&gpu).await?;
            let tokens = TokenGrid::from_position_major(&dims, &ids)?;
            let image = decode_one(&gpu, &dec, &tokens).await?;
            let original = signed_chw_to_rgb(&pixels, h, w);
            let (_, payloads) = crate::codec::encode_without_prior(&gpu, std::slice::from_ref(&tokens), n_embed)?;
            let bpp = (payloads[0].len() * 8) as f64 / (h * w) as f64;
            let levels = |im: &RgbImage| im.as_raw().iter().map(|&v| f32::from(v)).collect::<Vec<f32>>();
            let psnr_db = crate::metrics::psnr_db(&levels(&image), &levels(&original), 255.0);
            Ok(RoundTrip { original, out: Decoded { tokens, image }, bpp, psnr_db })
        })
    }

    /// Opens a classifier folder (model.safetensors + config.json: a ViT of any timm family,
    /// or a Swin) for the Classify tab; returns its one-line description.
    pub fn open_classifier(&mut self, dir: &Path) -> anyhow::Result<String> {
        self.recover()?;
        if cfg!(target_arch = "wasm32") {
            bail!("opening a model folder needs the file system: use the desktop viewer");
        }
        let model = Classifier::from_pretrained(&self.gpu, dir, None, WeightFormat::F32).with_context(|| format!("loading {}", dir.display()))?;
        let about = model.describe();
        self.classifier = Some((dir.to_path_buf(), Arc::new(model)));
        Ok(about)
    }

    /// Back to digits-vit in the Classify tab.
    pub fn close_classifier(&mut self) {
        self.classifier = None;
    }

    /// digits-vit's logits for `path` and the attention rollout of its class token.
    pub fn classify(&mut self, recipe: &Recipe, path: &Path) -> anyhow::Result<Classified> {
        Gpu::block_on(self.classify_job(recipe, path)?)
    }

    /// `classify` as a future that owns what it uses (see `generate_job`): the image is read,
    /// the model loaded and the graph planned now; running it and the readbacks come later.
    pub fn classify_job(&mut self, recipe: &Recipe, path: &Path) -> anyhow::Result<Pin<Box<dyn Future<Output = anyhow::Result<Classified>>>>> {
        self.recover()?;
        let img = self.read_image(path)?;
        if let Some((_, model)) = &self.classifier {
            // An opened folder: its logits, shown without a rollout (a Swin has no class token).
            let cfg = model.preprocess_config().clone();
            let pixels = preprocess(&img, &cfg)?;
            let plan = Plan::new(&self.gpu, model.graph(1)?)?;
            let gpu = self.gpu.clone();
            return Ok(Box::pin(async move {
                plan.set_input(&gpu, 0, &pixels)?;
                let logits = plan.run(&gpu)?[0].to_vec_f32_async(&gpu).await?;
                Ok(Classified { input: input_image(&pixels, &cfg), logits, rollout: Vec::new(), grid: 0 })
            }));
        }
        let (gpu, set) = self.load(recipe, &[ModelName::DigitsVit])?;
        let vit = set.vit.as_ref().unwrap();
        let c = vit.config.clone();
        let pixels = preprocess(&img, &c.preprocess)?;
        // Unshared buffers: every block's qkv output must still be readable after the run.
        let plan = Plan::unshared(gpu, vit.graph(1)?)?;
        let gpu = self.gpu.clone();
        Ok(Box::pin(async move {
            plan.set_input(&gpu, 0, &pixels)?;
            let logits = plan.run(&gpu)?[0].to_vec_f32_async(&gpu).await?;
            let tokens = c.tokens();
            let mut layers = Vec::with_capacity(c.depth);
            for n in 0..c.depth {
                let qkv = plan.node_values(&format!("blocks.{n}.attn.qkv"))?.1.to_vec_f32_async(&gpu).await?;
                layers.push(layer_attention(&qkv, tokens, c.num_heads, c.head_dim()));
            }
            classified(&c, &pixels, logits, &layers)
        }))
    }
}

/// The classifier's result from its logits and per-layer attention.
fn classified(c: &VitConfig, pixels: &[f32], logits: Vec<f32>, layers: &[Vec<f64>]) -> anyhow::Result<Classified> {
    let rollout = class_token_rollout(layers, c.tokens());
    let grid = c.img_size / c.patch_size;
    if rollout.len() != grid * grid {
        bail!("digits-vit has {} patch tokens, expected a {grid}×{grid} grid", rollout.len());
    }
    Ok(Classified { input: input_image(pixels, &c.preprocess), logits, rollout, grid })
}

/// A preprocessed CHW image mapped back to RGB: what the network saw.
fn input_image(pixels: &[f32], p: &PreprocessConfig) -> RgbImage {
    let (h, w) = p.input_size;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        Rgb([0, 1, 2].map(|ch| ((pixels[ch * h * w + i] * p.std[ch] + p.mean[ch]) * 255.0).round().clamp(0.0, 255.0) as u8))
    })
}

impl Engine {
    /// Per-node GPU times of the model behind `m`'s main output at the shape last used:
    /// the decoder for generate/round trip (`tokens`), the classifier for classify.
    pub fn profile(&mut self, recipe: &Recipe, m: ModelName, tokens: Option<&TokenGrid>) -> anyhow::Result<Vec<NodeTime>> {
        let plan = self.profile_plan(recipe, m, tokens)?;
        Ok(plan.profile(&self.gpu)?.1)
    }

    /// `profile` as a future (the browser's way): each node timed by the wall clock until the
    /// queue reports it done, since the browser cannot block on timestamp readbacks.
    pub fn profile_job(&mut self, recipe: &Recipe, m: ModelName, tokens: Option<&TokenGrid>) -> anyhow::Result<impl Future<Output = anyhow::Result<Vec<NodeTime>>> + 'static> {
        let plan = self.profile_plan(recipe, m, tokens)?;
        let gpu = self.gpu.clone();
        Ok(async move { Ok(plan.profile_async(&gpu).await?.1) })
    }

    /// The plan of model `m` with an input set: zeros for digits-vit, `tokens` for a decoder.
    fn profile_plan(&mut self, recipe: &Recipe, m: ModelName, tokens: Option<&TokenGrid>) -> anyhow::Result<Plan> {
        self.recover()?;
        let (gpu, set) = self.load(recipe, &[m])?;
        let plan = match m {
            ModelName::DigitsVit => {
                let vit = set.vit.as_ref().unwrap();
                let plan = vit.plan(gpu, 1)?;
                plan.set_input(gpu, 0, &vec![0.0f32; 3 * vit.config.img_size * vit.config.img_size])?;
                plan
            }
            _ => {
                let Some(tokens) = tokens else { bail!("nothing decoded yet: run the action first") };
                let dec = set.photo.get(&m).map(|t| &*t.decoder).or(set.digits.as_deref()).unwrap();
                let [b, h, w] = tokens.shape();
                let plan = dec.plan(gpu, b, h, w)?;
                plan.set_input(gpu, 0, &dec.checked_ids(tokens)?)?;
                plan
            }
        };
        Ok(plan)
    }
}

async fn decode_one(gpu: &Gpu, dec: &VqganDecoder, tokens: &TokenGrid) -> anyhow::Result<RgbImage> {
    let image = dec.decode(gpu, tokens)?;
    let &[_, 3, h, w] = &image.shape[..] else { bail!("decoder output {:?} is not [B, 3, H, W]", image.shape) };
    let pixels = image.to_vec_f32_async(gpu).await?;
    Ok(signed_chw_to_rgb(&pixels[..3 * h * w], h, w))
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f64> = logits.iter().map(|&l| ((l - max) as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|v| (v / sum) as f32).collect()
}

/// |a − b| per channel, multiplied by `gain` so small quantization differences are visible;
/// (max, mean) of the raw difference in 8-bit levels. Images of different sizes compare as
/// their common top-left part.
pub fn difference(a: &RgbImage, b: &RgbImage, gain: f32) -> (RgbImage, u8, f32) {
    let (w, h) = (a.width().min(b.width()), a.height().min(b.height()));
    let (mut max, mut sum) = (0u8, 0u64);
    let map = RgbImage::from_fn(w, h, |x, y| {
        let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
        Rgb([0, 1, 2].map(|c| {
            let d = p[c].abs_diff(q[c]);
            max = max.max(d);
            sum += d as u64;
            (d as f32 * gain).min(255.0) as u8
        }))
    });
    (map, max, sum as f32 / (3 * w * h).max(1) as f32)
}

/// The rollout as a heat map over `image`: each patch tinted from blue (little attention)
/// to red (most), blended half and half with the image.
pub fn rollout_overlay(image: &RgbImage, rollout: &[f32], grid: usize) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    RgbImage::from_fn(w, h, |x, y| {
        let (gx, gy) = ((x as usize * grid / w as usize).min(grid - 1), (y as usize * grid / h as usize).min(grid - 1));
        let heat = heat_color(rollout[gy * grid + gx]);
        let p = image.get_pixel(x, y);
        Rgb([0, 1, 2].map(|c| ((p[c] as u16 + heat[c] as u16) / 2) as u8))
    })
}

/// A blue → green → red ramp for t in [0, 1].
pub fn heat_color(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = ((t - 0.5) * 2.0).clamp(0.0, 1.0);
    let b = ((0.5 - t) * 2.0).clamp(0.0, 1.0);
    let g = 1.0 - r - b;
    [r, g, b].map(|v| (v * 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn difference_counts_levels_and_amplifies() {
        let a = RgbImage::from_pixel(2, 1, Rgb([10, 20, 30]));
        let mut b = a.clone();
        b.put_pixel(1, 0, Rgb([14, 20, 30]));
        let (map, max, mean) = difference(&a, &b, 10.0);
        assert_eq!(max, 4);
        assert!((mean - 4.0 / 6.0).abs() < 1e-6);
        assert_eq!(map.get_pixel(1, 0).0, [40, 0, 0]);
        assert_eq!(map.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 20.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[2] && p[2] > p[0]);
        // Large logits must not overflow to NaN.
        assert!(softmax(&[1000.0, 0.0])[0] == 1.0);
    }
}
