//! What several ops share and no op owns: table I/O, ROUGE-L, the language-model backend, the
//! compute device, the sentence encoder, models pulled from PyPI, the preference-pair reader,
//! seeded draws, Python-compatible string handling, the rounds of the prompt-synthesis ops, and
//! (in tests) the op test harness.

pub mod compute;
pub mod draw;
pub mod encoder;
pub mod llm;
pub mod pairs;
pub mod pulled;
pub mod pystr;
pub mod reward;
pub mod rouge;
pub mod synth;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;
