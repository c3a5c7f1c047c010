// SageAttention's int8 query · key words, shared by attention.wgsl and flash_attention.wgsl:
// packed for dot4I8Packed under PACKED_DOT, else unpacked once per query so the fallback only
// unpacks K. Needs common.wgsl (unpack_i8).
#if PACKED_DOT
alias QWord = u32;
fn q_word(w: u32) -> QWord {
    return w;
}
fn qk(q: QWord, k: u32) -> i32 {
    return dot4I8Packed(q, k);
}
#else
alias QWord = vec4<i32>;
fn q_word(w: u32) -> QWord {
    return unpack_i8(w);
}
fn qk(q: QWord, k: u32) -> i32 {
    return dot(q, unpack_i8(k));
}
#endif
