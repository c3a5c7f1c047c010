//! The minGPT prior against PyTorch (fixture from tools/make_gen_fixtures.py), its KV-cache
//! decoding against its own full pass, and sampling.

mod common;
use common::*;
use lowbit::models::prior::{Prior, PriorConfig};
use lowbit::models::sampling::{generate, sample, Rng, SamplingOptions};
use lowbit::models::Weights;
use lowbit::formats::WeightFormat;
use lowbit::Gpu;
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/prior_test");

/// PyTorch's inputs and outputs: ids [B, T], logits [B, T, V] and logits of the first 5 tokens.
struct Io {
    ids: Vec<u32>,
    shape: [usize; 2],
    logits: Vec<f32>,
    logits_short: Vec<f32>,
}

fn io() -> Io {
    let bytes = std::fs::read(Path::new(DIR).join("io.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    let shape = [ids.shape()[0], ids.shape()[1]];
    let ids = ids.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32).collect();
    let f32s = |name: &str| -> Vec<f32> { bytemuck::pod_collect_to_vec(st.tensor(name).unwrap().data()) };
    Io { ids, shape, logits: f32s("logits"), logits_short: f32s("logits_short") }
}

fn load(gpu: &Gpu, format: WeightFormat) -> Prior {
    Prior::from_pretrained(gpu, Path::new(DIR), format).unwrap()
}

/// The first `t` tokens of each row of row-major [B, T] `ids`.
fn prefix(ids: &[u32], shape: [usize; 2], t: usize) -> Vec<u32> {
    ids.chunks(shape[1]).flat_map(|row| row[..t].to_vec()).collect()
}

#[test]
fn full_pass_matches_pytorch() {
    let io = io();
    let [b, _] = io.shape;
    for (path, gpu) in gpus() {
        let prior = load(gpu, WeightFormat::F32);
        let logits = prior.forward(gpu, &io.ids, io.shape).unwrap();
        assert_eq!(logits.shape, [b, io.shape[1], prior.config.vocab_size]);
        assert_parity(&format!("prior logits {path}"), &logits.to_vec_f32(gpu).unwrap(), &io.logits);
        // An odd, shorter sequence.
        let short = prior.forward(gpu, &prefix(&io.ids, io.shape, 5), [b, 5]).unwrap();
        assert_parity(&format!("prior logits, 5 tokens {path}"), &short.to_vec_f32(gpu).unwrap(), &io.logits_short);
    }
}

#[test]
fn kv_cache_steps_match_full_pass() {
    let io = io();
    let [b, t] = io.shape;
    for (path, gpu) in gpus() {
        let prior = load(gpu, WeightFormat::F32);
        let v = prior.config.vocab_size;
        let full = prior.forward(gpu, &io.ids, io.shape).unwrap().to_vec_f32(gpu).unwrap();
        let at = |logits: &[f32], i: usize| -> Vec<f32> { logits.chunks(t * v).flat_map(|seq| seq[i * v..(i + 1) * v].to_vec()).collect() };
        // One token at a time from the start, and a 3-token prefill followed by steps.
        for first in [1, 3] {
            let mut session = prior.session(gpu, b).unwrap();
            let got = session.prefill(gpu, &prefix(&io.ids, io.shape, first), first).unwrap();
            let what = format!("prefill {first} {path}");
            assert_nmse(&what, &got, &at(&full, first - 1), F32_NMSE);
            assert_parity(&what, &got, &at(&io.logits, first - 1));
            for i in first..t {
                let step_ids: Vec<u32> = (0..b).map(|s| io.ids[s * t + i]).collect();
                let got = session.step(gpu, &step_ids).unwrap();
                let what = format!("step at {i} (prefill {first}) {path}");
                assert_nmse(&what, &got, &at(&full, i), F32_NMSE);
                assert_parity(&what, &got, &at(&io.logits, i));
            }
            assert_eq!(session.len(), t);
            // The cache is full: one more token is an error, not a wrap-around.
            assert!(session.step(gpu, &vec![0; b]).is_err(), "step past block_size");
        }
    }
}

#[test]
fn quantized_weights_stay_close() {
    let io = io();
    let gpu = gpu();
    // The fixture's weights are f16 values, so F16 packing must reproduce PyTorch to the
    // parity bar; Q8 (per-channel int8) within the quantized-GEMM bound.
    let f16 = load(gpu, WeightFormat::F16).forward(gpu, &io.ids, io.shape).unwrap().to_vec_f32(gpu).unwrap();
    assert_parity("prior logits, f16 weights", &f16, &io.logits);
    for fmt in [WeightFormat::Q8 { group: None }, WeightFormat::Q8 { group: Some(8) }] {
        let got = load(gpu, fmt).forward(gpu, &io.ids, io.shape).unwrap().to_vec_f32(gpu).unwrap();
        assert_nmse(&format!("prior logits, {} weights", fmt.name()), &got, &io.logits, QUANT_NMSE);
    }
}

#[test]
fn greedy_generation_follows_the_full_pass() {
    // Temperature 0 takes the argmax at each step: re-running the full pass on the generated
    // sequence must give those same argmaxes at every position.
    let gpu = gpu();
    let prior = load(gpu, WeightFormat::F32);
    let (v, n) = (prior.config.vocab_size, prior.config.tokens_per_image());
    let greedy = SamplingOptions::new(0.0, 0);
    let grid = generate(gpu, &prior, 3, 2, 0, &greedy).unwrap();
    assert_eq!(grid.shape(), [2, 3, 4]);
    for seq in grid.ids.chunks(n) {
        let mut ids = vec![3u32];
        ids.extend(seq[..n - 1].iter().map(|&z| z as u32));
        let logits = prior.forward(gpu, &ids, [1, n]).unwrap().to_vec_f32(gpu).unwrap();
        for (i, row) in logits.chunks(v).enumerate() {
            let best = row.iter().enumerate().fold(0, |b, (j, &l)| if l > row[b] { j } else { b });
            assert_eq!(seq[i], best as i64, "greedy token {i}");
        }
    }
}

/// The fixture's prior with token `null` declared as the null class of classifier-free guidance
/// (the fixture was not trained for it, but the arithmetic of guidance does not care).
fn guided(gpu: &Gpu, null: usize) -> Prior {
    let dir = Path::new(DIR);
    let mut config = PriorConfig::load(&dir.join("config.json")).unwrap();
    config.null_class = Some(null);
    Prior::new(gpu, &config, &Weights::load(&dir.join("model.safetensors")).unwrap(), WeightFormat::F32).unwrap()
}

#[test]
fn guided_greedy_generation_follows_the_full_passes() {
    // Guidance draws from uncond + g·(cond − uncond): with temperature 0 each token must be the
    // argmax of that mix of two full passes, one under the class and one under the null class.
    let gpu = gpu();
    let (class, null, g) = (2u32, 6usize, 3.0f32);
    let prior = guided(gpu, null);
    let (v, n) = (prior.config.vocab_size, prior.config.tokens_per_image());
    let opts = SamplingOptions { guidance: g, ..SamplingOptions::new(0.0, 0) };
    let grid = generate(gpu, &prior, class as usize, 2, 0, &opts).unwrap();
    let plain = generate(gpu, &prior, class as usize, 1, 0, &SamplingOptions::new(0.0, 0)).unwrap();
    assert_ne!(grid.ids[..n], plain.ids[..], "guidance 3 changed nothing on this fixture");
    for seq in grid.ids.chunks(n) {
        let tail: Vec<u32> = seq[..n - 1].iter().map(|&z| z as u32).collect();
        let pass = |first: u32| {
            let ids: Vec<u32> = std::iter::once(first).chain(tail.iter().copied()).collect();
            prior.forward(gpu, &ids, [1, n]).unwrap().to_vec_f32(gpu).unwrap()
        };
        let (cond, uncond) = (pass(class), pass(null as u32));
        for i in 0..n {
            let mix: Vec<f32> = (0..v).map(|j| uncond[i * v + j] + g * (cond[i * v + j] - uncond[i * v + j])).collect();
            let best = mix.iter().enumerate().fold(0, |b, (j, &l)| if l > mix[b] { j } else { b });
            assert_eq!(seq[i], best as i64, "guided greedy token {i}");
        }
    }
    // Guidance 1 is plain conditional sampling, batch or not.
    let one = generate(gpu, &prior, class as usize, 1, 0, &SamplingOptions { guidance: 1.0, ..SamplingOptions::new(0.0, 0) }).unwrap();
    assert_eq!(one, plain);
    // A prior without a null class refuses guidance; a null class among the classes is refused.
    let err = generate(gpu, &load(gpu, WeightFormat::F32), 0, 1, 0, &opts).unwrap_err().to_string();
    assert!(err.contains("null_class"), "{err}");
    assert!(PriorConfig::from_json(&serde_json::to_string(&serde_json::json!({
        "architecture": "taming_mingpt", "vocab_size": 37, "block_size": 12, "n_layer": 2, "n_head": 2,
        "n_embd": 24, "n_classes": 5, "token_grid": [3, 4], "conditioning": "class_token", "null_class": 1
    })).unwrap()).is_err());
}

#[test]
fn sampling_is_deterministic_per_seed() {
    let gpu = gpu();
    let prior = load(gpu, WeightFormat::F32);
    let opts = SamplingOptions::new(1.0, 10);
    let a = generate(gpu, &prior, 1, 3, 42, &opts).unwrap();
    let b = generate(gpu, &prior, 1, 3, 42, &opts).unwrap();
    let c = generate(gpu, &prior, 1, 3, 43, &opts).unwrap();
    assert_eq!(a, b, "same seed, same tokens");
    assert_ne!(a.ids, c.ids, "another seed, other tokens");
    assert!(a.ids.iter().all(|&id| (0..prior.config.vocab_size as i64).contains(&id)));
    // The batch's sequences differ from each other (not one draw copied).
    let n = prior.config.tokens_per_image();
    assert_ne!(a.ids[..n], a.ids[n..2 * n]);
}

#[test]
fn sample_follows_temperature_and_top_k() {
    let logits = [0.0f32, 1.0, 2.0, 0.5, 2.0];
    let mut rng = Rng::new(7);
    let draws = 20000;
    let count = |opts: SamplingOptions, rng: &mut Rng| {
        let mut c = [0usize; 5];
        for _ in 0..draws {
            c[sample(&logits, &opts, rng).unwrap() as usize] += 1;
        }
        c
    };
    // top-k 1 with a tie keeps both maxima; temperature 0 is the first maximum.
    let c = count(SamplingOptions::new(1.0, 1), &mut rng);
    assert_eq!(c[0] + c[1] + c[3], 0);
    assert!(c[2] > draws / 3 && c[4] > draws / 3, "{c:?}");
    assert_eq!(sample(&logits, &SamplingOptions::new(0.0, 0), &mut rng).unwrap(), 2);
    // No filtering: frequencies follow softmax(logits / 2) within a few standard deviations.
    let c = count(SamplingOptions::new(2.0, 0), &mut rng);
    let w: Vec<f64> = logits.iter().map(|&l| (l as f64 / 2.0).exp()).collect();
    let total: f64 = w.iter().sum();
    for (i, &n) in c.iter().enumerate() {
        let p = w[i] / total;
        let sd = (draws as f64 * p * (1.0 - p)).sqrt();
        assert!((n as f64 - draws as f64 * p).abs() < 5.0 * sd, "token {i}: {n} draws, expected {:.0}", draws as f64 * p);
    }
    // Bad options and logits.
    assert!(sample(&logits, &SamplingOptions::new(-1.0, 0), &mut rng).is_err());
    assert!(sample(&[0.0, f32::NAN], &SamplingOptions::default(), &mut rng).is_err());
    assert!(sample(&[], &SamplingOptions::default(), &mut rng).is_err());
}

#[test]
fn bad_input_is_an_error() {
    let gpu = gpu();
    let prior = load(gpu, WeightFormat::F32);
    let io = io();
    let opts = SamplingOptions::default();
    assert!(generate(gpu, &prior, 5, 1, 0, &opts).is_err(), "class 5 of 5");
    assert!(generate(gpu, &prior, 0, 0, 0, &opts).is_err(), "count 0");
    assert!(generate(gpu, &prior, 0, 1, 0, &SamplingOptions::new(f32::INFINITY, 0)).is_err());
    assert!(prior.forward(gpu, &io.ids, [3, 11]).is_err(), "ids length");
    assert!(prior.forward(gpu, &[0; 13], [1, 13]).is_err(), "longer than block_size");
    assert!(prior.forward(gpu, &[0, 37], [1, 2]).is_err(), "id 37 of 37");
    assert!(prior.forward(gpu, &[], [0, 1]).is_err(), "batch 0");
    assert!(prior.session(gpu, 0).is_err(), "batch 0");
    assert!(prior.session(gpu, 100_000_000).is_err(), "more sequences than a binding holds");
    let mut session = prior.session(gpu, 2).unwrap();
    assert!(session.step(gpu, &[1]).is_err(), "one id for two sequences");
    assert!(session.step(gpu, &[1, 99]).is_err(), "id out of range");
    assert!(session.is_empty(), "failed steps do not advance");

    // Configs and checkpoints.
    let text = std::fs::read_to_string(Path::new(DIR).join("config.json")).unwrap();
    let config = PriorConfig::from_json(&text).unwrap();
    for (from, to) in [
        ("\"taming_mingpt\"", "\"gpt2\""),
        ("\"n_classes\": 5", "\"n_classes\": 38"),
        ("\"n_head\": 2", "\"n_head\": 5"),
        ("\"token_grid\": [\n    3,\n    4\n  ]", "\"token_grid\": [4, 4]"),
        ("\"class_token\"", "\"text\""),
    ] {
        assert!(text.contains(from), "fixture config has {from}");
        let err = PriorConfig::from_json(&text.replace(from, to)).unwrap_err();
        eprintln!("{to}: {err}");
    }
    let weights = Weights::load(&Path::new(DIR).join("model.safetensors")).unwrap();
    for key in ["blocks.1.attn.value.bias", "head.weight", "pos_emb"] {
        let mut w = weights.clone();
        w.tensors.remove(key);
        let err = Prior::new(gpu, &config, &w, WeightFormat::F32).err().expect("missing tensor");
        assert!(err.to_string().contains(key), "{err}");
    }
    let mut w = weights.clone();
    w.tensors.get_mut("tok_emb.weight").unwrap().shape = vec![36, 24];
    assert!(Prior::new(gpu, &config, &w, WeightFormat::F32).is_err(), "mismatched shape");
    let fewer = PriorConfig { n_layer: 1, ..config.clone() };
    assert!(Prior::new(gpu, &fewer, &weights, WeightFormat::F32).is_err(), "more layers than configured");
    assert!(Prior::from_pretrained(gpu, Path::new("/nonexistent/prior"), WeightFormat::F32).is_err());
}

/// `lowbit generate` end to end on the fixtures: the prior's config names the decoder
/// (tests/fixtures/vqgan_encoder_test, 64 codes ≥ the prior's 37).
#[test]
fn generate_command_writes_images_and_tokens() {
    let out = std::env::temp_dir().join(format!("lowbit-generate-test-{}", std::process::id()));
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lowbit")).arg("generate").args(["--prior", DIR]).args(args).output().unwrap()
    };
    let dir = out.to_str().unwrap();
    let ok = run(&["--class", "2", "--count", "3", "--seed", "9", "--out", dir]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(stdout.contains("generate") && stdout.contains("decode"), "prints stage times: {stdout}");
    for i in 0..3 {
        let img = image::open(out.join(format!("class2-{i}.png"))).unwrap();
        assert_eq!((img.width(), img.height()), (8, 6), "3×4 tokens, one 2× upsampling");
    }
    // The tokens file is what `generate` samples for that seed, as i32 [3, 3, 4].
    let tokens = lowbit::models::vqgan::TokenGrid::load(&out.join("tokens.safetensors"), "tokens").unwrap();
    let gpu = gpu();
    let prior = load(gpu, WeightFormat::F32);
    let opts = prior.config.sampling.unwrap();
    assert_eq!(tokens, generate(gpu, &prior, 2, 3, 9, &opts).unwrap());
    for bad in [&["--class", "5", "--out", dir][..], &["--class", "0", "--count", "0", "--out", dir], &["--class", "0", "--decoder", "/nonexistent", "--out", dir]] {
        let r = run(bad);
        assert!(!r.status.success(), "{bad:?} should fail");
        assert!(String::from_utf8_lossy(&r.stderr).contains("error"), "{bad:?}: {}", String::from_utf8_lossy(&r.stderr));
    }
    std::fs::remove_dir_all(&out).ok();
}

/// A decoding step is one planned graph: `bench model` on a prior reports ms and dispatches
/// per step (one per node: per block two LayerNorms, four Linears, two residual adds, K/V
/// append and attention; then embed, ln_f and head), and `generate --profile` prints per-node
/// times of a prefill and of a step.
#[test]
fn decode_steps_are_measured_and_profiled() {
    let bench = lowbit_ok(&["bench", "model", "--model", DIR, "--reps", "1", "--json"]);
    let row: serde_json::Value = serde_json::from_str(bench.lines().last().unwrap()).unwrap();
    assert_eq!(row["task"], "decode", "{row}");
    assert!(row["ms_per_step"].as_f64().unwrap() > 0.0, "{row}");
    let prior = load(gpu(), WeightFormat::F32);
    let per_block = 10;
    assert_eq!(row["dispatches_per_step"].as_u64().unwrap() as usize, per_block * prior.config.n_layer + 3, "{row}");
    let out = std::env::temp_dir().join(format!("lowbit-generate-profile-{}", std::process::id()));
    let text = lowbit_ok(&["generate", "--prior", DIR, "--class", "1", "--out", out.to_str().unwrap(), "--profile"]);
    assert!(text.contains("prefill of") && text.contains("decode step at position"), "{text}");
    // Only the slowest nodes are listed, and which those are depends on timing; the per-op
    // counts do not, and all but three nodes (embed, ln_f, head) are in a block.
    let (blocks, linears) = (prior.config.n_layer, 4 * prior.config.n_layer + 1);
    for (op, n) in [("kv_attend", blocks), ("linear", linears)] {
        // The line `print_profile` writes for an op (src/cli/model.rs).
        let op = format!("{op:<16} ({n} nodes)");
        assert_eq!(text.matches(&op).count(), 2, "{op}: {text}");
    }
    assert!(text.contains(" blocks."), "{text}");
    std::fs::remove_dir_all(&out).ok();
}
