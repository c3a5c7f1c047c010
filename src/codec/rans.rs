//! A byte-wise 32-bit rANS coder (Duda 2013, as in ryg_rans) over integer frequency tables,
//! and the deterministic integer procedure that turns a model's logits into such a table.
//!
//! Everything here is integer arithmetic, so an encoder and a decoder that build the same
//! tables agree bit for bit on every machine. The one float step is the rounding of logits to
//! a coarse grid in [`Freqs::from_logits`]; see there for what that does and does not protect.

use crate::{invalid, Result};

/// Frequencies sum to 2^SCALE_BITS.
pub const SCALE_BITS: u32 = 16;
const TOTAL: u32 = 1 << SCALE_BITS;
/// The lower bound of the normalized state interval [L, 256·L).
const L: u32 = 1 << 23;
/// Every symbol gets frequency ≥ 1, so an alphabet may have at most half the total (the other
/// half is what the model distributes).
pub const MAX_SYMBOLS: usize = (TOTAL / 2) as usize;

/// Logits are rounded to steps of 1/GRID bits (log2 units) below the maximum...
const GRID: f64 = 8.0;
/// ...and floored at 24 bits below it: rarer than 2^-24 costs the same as 2^-24 (frequency 1).
const MAX_STEPS: i64 = 24 * GRID as i64;
/// round(2^31 · 2^(−k/8)), k = 0..7: the fractional powers of two, as integers so that no libm
/// `exp` (which may differ by an ulp between platforms) enters the tables.
const POW2_FRAC: [u64; 8] = [2147483648, 1969251188, 1805811301, 1655936265, 1518500250, 1392470869, 1276901417, 1170923762];

/// A frequency table: symbol s has the range [cum[s], cum[s+1]) of 0..2^SCALE_BITS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freqs {
    cum: Vec<u32>,
}

impl Freqs {
    /// From per-symbol frequencies that are each ≥ 1 and sum to 2^SCALE_BITS.
    pub fn new(freqs: &[u32]) -> Result<Freqs> {
        if freqs.is_empty() || freqs.len() > MAX_SYMBOLS {
            invalid!("a frequency table needs 1..={MAX_SYMBOLS} symbols, got {}", freqs.len());
        }
        let mut cum = Vec::with_capacity(freqs.len() + 1);
        let mut total = 0u64;
        cum.push(0);
        for (s, &f) in freqs.iter().enumerate() {
            if f == 0 {
                invalid!("symbol {s} has frequency 0: it could never be coded");
            }
            total += f as u64;
            cum.push(total.min(u32::MAX as u64) as u32);
        }
        if total != TOTAL as u64 {
            invalid!("frequencies sum to {total}, not {TOTAL}");
        }
        Ok(Freqs { cum })
    }

    /// The same frequency for every one of `n` symbols (the first ones take the remainder).
    pub fn uniform(n: usize) -> Result<Freqs> {
        if n == 0 || n > MAX_SYMBOLS {
            invalid!("a frequency table needs 1..={MAX_SYMBOLS} symbols, got {n}");
        }
        let (base, extra) = (TOTAL / n as u32, TOTAL % n as u32);
        Freqs::new(&(0..n as u32).map(|s| base + u32::from(s < extra)).collect::<Vec<_>>())
    }

    /// A table from a model's logits (natural-log units, any offset), over the first
    /// `symbols` entries only (a sub-codebook: ids outside it can be neither coded nor decoded).
    ///
    /// Each logit is rounded to a grid of 1/8 bit below the row's maximum; the weight of a
    /// symbol k steps down is 2^(−k/8) in 31-bit fixed point (`POW2_FRAC` shifted), and
    /// frequencies are 1 + ⌊weight · (2^16 − n) / Σweight⌋, the rounding remainder going to
    /// the first most likely symbol. Only the rounding step sees floats, so a logit that moves
    /// by an ulp between GPUs changes the table only when it sits on a grid boundary (about
    /// ulp·8/ln2 of the cases per logit); such a flip makes the decoder diverge, which the
    /// payload check then reports. Same GPU and driver: identical logits, identical tables.
    pub fn from_logits(logits: &[f32], symbols: usize) -> Result<Freqs> {
        if symbols == 0 || symbols > logits.len() || symbols > MAX_SYMBOLS {
            invalid!("a table of {symbols} symbols from {} logits (at most {MAX_SYMBOLS})", logits.len());
        }
        let row = &logits[..symbols];
        if let Some(i) = row.iter().position(|l| !l.is_finite()) {
            invalid!("logit {i} is {}: the model produced a non-finite value", row[i]);
        }
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64;
        let weights: Vec<u64> = row
            .iter()
            .map(|&l| {
                let steps = ((max - l as f64) * std::f64::consts::LOG2_E * GRID).round() as i64;
                let k = steps.clamp(0, MAX_STEPS) as u64;
                POW2_FRAC[(k % 8) as usize] >> (k / 8)
            })
            .collect();
        Freqs::from_weights(&weights)
    }

    /// A table proportional to integer `weights` (each ≥ 1, sum < 2^47): frequency
    /// 1 + ⌊w·(2^16 − n)/Σw⌋, the rounding remainder to the first largest weight.
    pub fn from_weights(weights: &[u64]) -> Result<Freqs> {
        let n = weights.len();
        if n == 0 || n > MAX_SYMBOLS {
            invalid!("a frequency table needs 1..={MAX_SYMBOLS} symbols, got {n}");
        }
        let sum: u64 = weights.iter().sum();
        if sum == 0 || sum >= 1 << 47 {
            invalid!("weights summing to {sum} are out of range");
        }
        let spare = (TOTAL as u64) - n as u64;
        let mut freqs: Vec<u32> = weights.iter().map(|&w| 1 + (w * spare / sum) as u32).collect();
        let used: u32 = freqs.iter().sum();
        let top = weights.iter().enumerate().fold(0, |best, (i, &w)| if w > weights[best] { i } else { best });
        freqs[top] += TOTAL - used;
        Freqs::new(&freqs)
    }

    pub fn len(&self) -> usize {
        self.cum.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn freq(&self, s: usize) -> u32 {
        self.cum[s + 1] - self.cum[s]
    }

    /// The ideal code length of `s` in bits.
    pub fn bits(&self, s: usize) -> f64 {
        SCALE_BITS as f64 - (self.freq(s) as f64).log2()
    }

    /// The symbol whose range holds `slot` (< 2^SCALE_BITS).
    fn find(&self, slot: u32) -> usize {
        self.cum.partition_point(|&c| c <= slot) - 1
    }
}

/// Encodes `symbols[i]` under `tables[i]`; rANS works last-in first-out, so the symbols are
/// pushed in reverse and the bytes reversed at the end, and the decoder reads forward.
pub fn encode(symbols: &[usize], tables: &[&Freqs]) -> Result<Vec<u8>> {
    if symbols.len() != tables.len() {
        invalid!("rANS: {} symbols but {} frequency tables", symbols.len(), tables.len());
    }
    let mut out = Vec::new();
    let mut x = L;
    for (&s, t) in symbols.iter().zip(tables).rev() {
        if s >= t.len() {
            invalid!("rANS: symbol {s} is outside the table's {} symbols", t.len());
        }
        let (start, freq) = (t.cum[s], t.freq(s));
        // Renormalize so that the state after coding stays below 256·L.
        let x_max = ((L >> SCALE_BITS) << 8) * freq;
        while x >= x_max {
            out.push(x as u8);
            x >>= 8;
        }
        x = ((x / freq) << SCALE_BITS) + (x % freq) + start;
    }
    out.extend_from_slice(&x.to_le_bytes());
    out.reverse();
    Ok(out)
}

/// Decodes a stream symbol by symbol, each under the table the caller builds from the
/// symbols so far (a prior needs them), so several streams can advance in lockstep.
pub struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    x: u32,
    count: usize,
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Result<Decoder<'a>> {
        let Some(head) = bytes.get(..4) else { invalid!("rANS payload of {} bytes is shorter than its 4-byte state (truncated)", bytes.len()) };
        Ok(Decoder { bytes, pos: 4, x: u32::from_be_bytes(head.try_into().unwrap()), count: 0 })
    }

    pub fn next(&mut self, t: &Freqs) -> Result<usize> {
        let slot = self.x & (TOTAL - 1);
        let s = t.find(slot);
        self.x = t.freq(s) * (self.x >> SCALE_BITS) + slot - t.cum[s];
        while self.x < L {
            let Some(&b) = self.bytes.get(self.pos) else { invalid!("rANS payload ends early, at symbol {} (truncated or corrupted)", self.count) };
            self.x = (self.x << 8) | b as u32;
            self.pos += 1;
        }
        self.count += 1;
        Ok(s)
    }

    /// Errors unless the stream ended exactly where the encoder started: bytes left over or
    /// another final state mean a corrupted payload.
    pub fn finish(self) -> Result<()> {
        if self.x != L || self.pos != self.bytes.len() {
            invalid!("rANS payload does not end where the encoder's did (state {:#x}, {} of {} bytes read): corrupted", self.x, self.pos, self.bytes.len());
        }
        Ok(())
    }
}

/// Decodes `count` symbols, the i-th under `table(i, symbols so far)`, and checks the end.
pub fn decode(bytes: &[u8], count: usize, mut table: impl FnMut(usize, &[usize]) -> Result<Freqs>) -> Result<Vec<usize>> {
    let mut dec = Decoder::new(bytes)?;
    let mut symbols = Vec::with_capacity(count.min(1 << 20));
    for i in 0..count {
        let t = table(i, &symbols)?;
        symbols.push(dec.next(&t)?);
    }
    dec.finish()?;
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sampling::Rng;

    fn random_table(rng: &mut Rng, n: usize, extreme: bool) -> Freqs {
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                let u = rng.next_f64() as f32;
                if extreme { if i == 0 { 50.0 } else { -50.0 * u } } else { 6.0 * u }
            })
            .collect();
        Freqs::from_logits(&logits, n).unwrap()
    }

    #[test]
    fn round_trips_random_streams_under_random_tables() {
        let mut rng = Rng::new(7);
        for case in 0..60 {
            let n = [1, 2, 3, 17, 256, 1000, MAX_SYMBOLS][case % 7];
            let extreme = case % 3 == 0;
            let len = (rng.next_u64() % 500) as usize;
            let tables: Vec<Freqs> = (0..len).map(|_| random_table(&mut rng, n, extreme)).collect();
            // Symbols drawn uniformly: rare ones (frequency 1) get coded often.
            let symbols: Vec<usize> = (0..len).map(|_| (rng.next_u64() % n as u64) as usize).collect();
            let refs: Vec<&Freqs> = tables.iter().collect();
            let bytes = encode(&symbols, &refs).unwrap();
            let back = decode(&bytes, len, |i, _| Ok(tables[i].clone())).unwrap();
            assert_eq!(back, symbols, "case {case}: n {n}, extreme {extreme}");
        }
    }

    #[test]
    fn likely_symbols_cost_little_and_damage_is_detected() {
        let table = Freqs::from_logits(&[20.0, 0.0, 0.0, 0.0], 4).unwrap();
        assert_eq!((0..4).map(|s| table.freq(s)).sum::<u32>(), TOTAL);
        assert!((1..4).all(|s| table.freq(s) >= 1));
        let symbols = vec![0; 1000];
        let bytes = encode(&symbols, &vec![&table; 1000]).unwrap();
        assert!(bytes.len() < 20, "{} bytes for 1000 near-certain symbols", bytes.len());
        assert!(decode(&bytes[..bytes.len() - 1], 1000, |_, _| Ok(table.clone())).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, 1000, |_, _| Ok(table.clone())).is_err());
        assert!(decode(&[], 1, |_, _| Ok(table.clone())).is_err());
    }

    #[test]
    fn tables_are_checked_and_sub_codebooks_exclude_the_rest() {
        assert!(Freqs::new(&[0, TOTAL]).is_err());
        assert!(Freqs::new(&[1, 1]).is_err());
        assert!(Freqs::from_logits(&[f32::NAN, 0.0], 2).is_err());
        let t = Freqs::from_logits(&[0.0, 0.0, 100.0], 2).unwrap();
        assert_eq!(t.len(), 2);
        assert!(encode(&[2], &[&t]).is_err());
        assert_eq!(Freqs::uniform(3).unwrap().freq(0), TOTAL / 3 + 1);
    }
}
