//! Tokenizers built from a GGUF's own metadata or a Hugging Face `tokenizer.json`.
//!
//! A GGUF names its pre-tokenizer (`tokenizer.ggml.pre`); each name maps to the split rules
//! llama.cpp applies for it, so the same text gives the same ids as llama.cpp.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};

/// GPT-2's split rule (what `ByteLevel` applies with `use_regex`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split rule.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split rule (Llama 3's with single digits).
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex splits llama.cpp applies, in order, for a `tokenizer.ggml.pre` name.
fn pre_tokenizer_rules(pre: &str) -> Option<&'static [&'static str]> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "roberta-bpe" | "olmo"
        | "jais" | "trillion" => &[GPT2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "superbpe" => &[LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => &[QWEN2],
        // StarCoder's family isolates every digit, then applies GPT-2's rule.
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            &[r"\p{N}", GPT2]
        }
        _ => return None,
    })
}

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Text to token ids and back, plus the special ids generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    end_of_generation: Vec<u32>,
}

/// The parts of a GGUF's `tokenizer.ggml.*` metadata a tokenizer is built from.
pub struct GgufVocab<'a> {
    /// `tokenizer.ggml.model` (only `gpt2`, byte-level BPE, is supported).
    pub model: &'a str,
    /// `tokenizer.ggml.pre`.
    pub pre: Option<&'a str>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.merges` (`"a b"` strings).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.token_type`.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

/// Tokens that end a turn in the common chat formats, beside the declared EOS.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
];

impl Tokenizer {
    /// Builds a byte-level BPE tokenizer from GGUF vocabulary metadata.
    pub fn from_gguf(v: GgufVocab<'_>) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "tokenizer model '{}' is not supported (only byte-level BPE, 'gpt2')",
                v.model
            )));
        }
        let pre = v.pre.unwrap_or("default");
        let rules = pre_tokenizer_rules(pre).ok_or_else(|| {
            Error::Tokenizer(format!(
                "unknown pre-tokenizer '{pre}' (tokenizer.ggml.pre)"
            ))
        })?;
        let vocab: ahash::AHashMap<String, u32> = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = v
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("malformed merge '{m}'")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer(rules)?));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let typed = |ty: i32| {
            v.tokens
                .iter()
                .zip(&v.token_types)
                .filter(move |(_, t)| **t == ty)
                .map(|(s, _)| s.clone())
        };
        inner
            .add_special_tokens(typed(TOKEN_TYPE_CONTROL).map(|t| AddedToken::from(t, true)))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner
            .add_tokens(typed(TOKEN_TYPE_USER_DEFINED).map(|t| AddedToken::from(t, false)))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let controls: Vec<String> = typed(TOKEN_TYPE_CONTROL).collect();
        Ok(Self::with_specials(
            inner, v.bos, v.eos, v.add_bos, &controls,
        ))
    }

    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path, bos: Option<u32>, eos: &[u32], add_bos: bool) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let specials: Vec<String> = inner
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special)
            .map(|t| t.content.clone())
            .collect();
        let mut tok = Self::with_specials(inner, bos, eos.first().copied(), add_bos, &specials);
        for &id in eos {
            if !tok.end_of_generation.contains(&id) {
                tok.end_of_generation.push(id);
            }
        }
        Ok(tok)
    }

    /// Wraps a built tokenizer; `specials` are the control tokens' texts.
    pub(crate) fn with_specials(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        add_bos: bool,
        specials: &[String],
    ) -> Self {
        let mut end_of_generation: Vec<u32> = eos.into_iter().collect();
        for s in specials
            .iter()
            .filter(|s| END_OF_TURN.contains(&s.as_str()))
        {
            if let Some(id) = inner.token_to_id(s)
                && !end_of_generation.contains(&id)
            {
                end_of_generation.push(id);
            }
        }
        Self {
            inner,
            bos,
            eos,
            add_bos,
            end_of_generation,
        }
    }

    /// Token ids of `text`; special-token texts such as `<|im_start|>` become their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a rendered prompt, with BOS first when the model wants it and the
    /// template did not already write it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode(text)?;
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The raw bytes one token stands for (a token may hold part of a UTF-8 character).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(piece) = self.inner.id_to_token(id) else {
            return Vec::new();
        };
        if self.inner.get_added_tokens_decoder().contains_key(&id) {
            return piece.into_bytes();
        }
        // Byte-level pieces spell each byte as one character of GPT-2's alphabet.
        let table = byte_level_inverse();
        piece
            .chars()
            .map(|c| table.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| piece.into_bytes())
    }

    /// The ids of control tokens (`<|im_start|>`, …): never text a grammar may produce.
    pub fn special_ids(&self) -> std::collections::HashSet<u32> {
        self.inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect()
    }

    /// Whether generating `id` ends the turn.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.contains(&id)
    }

    /// The ids that end a turn.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// The beginning-of-sequence token's text, if the model has one.
    pub fn bos_text(&self) -> Option<String> {
        self.bos.and_then(|id| self.inner.id_to_token(id))
    }

    /// The end-of-sequence token's text, if the model has one.
    pub fn eos_text(&self) -> Option<String> {
        self.eos.and_then(|id| self.inner.id_to_token(id))
    }

    /// Writes the tokenizer as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

fn pre_tokenizer(rules: &[&str]) -> Result<PreTokenizerWrapper> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(rules.len() + 1);
    for rule in rules {
        let split = Split::new(
            SplitPattern::Regex((*rule).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| Error::Tokenizer(format!("pre-tokenizer rule {rule}: {e}")))?;
        steps.push(split.into());
    }
    // The splits above replace ByteLevel's own regex; it only maps bytes to its alphabet.
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps).into())
}

/// GPT-2's printable alphabet for the 256 bytes, byte → char.
pub(crate) fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            extra += 1;
            255 + extra
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

fn byte_level_inverse() -> &'static HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        byte_level_alphabet()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_pre_tokenizer_builds() {
        for name in ["default", "llama-bpe", "qwen2", "smollm"] {
            let rules = pre_tokenizer_rules(name).expect("known");
            pre_tokenizer(rules).expect("builds");
        }
        assert!(pre_tokenizer_rules("no-such-tokenizer").is_none());
    }

    #[test]
    fn the_byte_alphabet_is_a_bijection() {
        let table = byte_level_alphabet();
        assert_eq!(table[b'a' as usize], 'a');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(byte_level_inverse().len(), 256);
    }
}
