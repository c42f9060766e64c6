//! Constrained decoding with llguidance: a grammar (a JSON schema, or a Lark grammar that may
//! embed schemas with `%json`) becomes, at every step, the set of tokens that keep the output
//! inside the grammar; generation samples from the model's distribution restricted to it.
//!
//! llguidance is Microsoft's grammar engine (Earley parser over a lazily built lexer, token
//! masks from a trie of the vocabulary): the structure here is only the adapter between it and
//! this engine's tokenizer.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// What the output must match.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// One JSON value valid under this JSON schema (`{}` or `{"type": "object"}` for any
    /// object), written compactly (no whitespace between tokens).
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect; `%json { … }` embeds a schema.
    Lark(String),
}

impl Grammar {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema)),
            Grammar::Lark(src) => TopLevelGrammar::from_lark(src.clone()),
        }
    }
}

/// `schema` with llguidance's option for compact JSON: a small model left free to place
/// whitespace tends to emit it without end.
pub fn compact(schema: &Value) -> Value {
    let mut s = match schema {
        Value::Object(m) => m.clone(),
        // `true` accepts anything; `false` is left for llguidance to refuse.
        Value::Bool(true) => serde_json::Map::new(),
        other => return other.clone(),
    };
    s.insert(
        "x-guidance".into(),
        serde_json::json!({"whitespace_flexible": false}),
    );
    Value::Object(s)
}

/// The vocabulary as llguidance sees it: each token's bytes, control tokens marked as
/// special (llguidance's 0xFF prefix) so that no grammar lexeme can produce them.
struct Vocab {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Vocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Forced text (the fixed parts of a grammar) is tokenized as the model would.
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// A model's llguidance state, built on first use: a trie of its vocabulary.
pub(crate) struct Constraints(OnceLock<std::result::Result<ParserFactory, String>>);

impl Constraints {
    pub(crate) fn new() -> Self {
        Self(OnceLock::new())
    }

    /// The parser factory for `tok` over an embedding of `vocab_size` rows.
    fn factory(&self, tok: &Tokenizer, vocab_size: usize) -> Result<&ParserFactory> {
        self.0
            .get_or_init(|| {
                let special = tok.special_ids();
                // The embedding may have more rows than the tokenizer has tokens: those rows
                // are never allowed (an empty word matches nothing).
                let words: Vec<Vec<u8>> = (0..vocab_size as u32)
                    .map(|id| {
                        if id as usize >= tok.vocab_size() {
                            Vec::new()
                        } else if special.contains(&id) {
                            let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                            w.extend(tok.token_bytes(id));
                            w
                        } else {
                            tok.token_bytes(id)
                        }
                    })
                    .collect();
                let eog = tok.end_of_generation();
                let eos = eog.first().copied().unwrap_or(0);
                let info = TokRxInfo::new(vocab_size as u32, eos);
                let trie = TokTrie::from(&info, &words).with_eos_tokens(eog);
                let env: TokEnv = Arc::new(Vocab {
                    trie,
                    tokenizer: tok.clone(),
                });
                let mut f = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                f.quiet();
                Ok(f)
            })
            .as_ref()
            .map_err(|e| {
                Error::InvalidArgument(format!("constrained decoding is unavailable: {e}"))
            })
    }

    /// Compiles `grammar` for `tok` (embedding of `vocab_size` rows). Errors:
    /// [`Error::InvalidArgument`] with llguidance's message when the grammar or schema is
    /// malformed or unsupported.
    pub(crate) fn compile(
        &self,
        tok: &Tokenizer,
        vocab_size: usize,
        grammar: &Grammar,
    ) -> Result<Constraint> {
        let parser = self
            .factory(tok, vocab_size)?
            .create_parser(grammar.top_level())
            .map_err(|e| Error::InvalidArgument(format!("the grammar: {e}")))?;
        let m = Matcher::new(Ok(parser));
        match m.get_error() {
            Some(e) => Err(Error::InvalidArgument(format!("the grammar: {e}"))),
            None => Ok(Constraint(m)),
        }
    }
}

/// A grammar being followed: the set of allowed next tokens, advanced token by token.
pub(crate) struct Constraint(Matcher);

impl Constraint {
    /// The tokens allowed next (only end-of-turn tokens once the grammar is complete).
    pub(crate) fn allowed(&mut self) -> Result<SimpleVob> {
        let mask = self
            .0
            .compute_mask_or_eos()
            .map_err(|e| Error::InvalidArgument(format!("constrained decoding: {e}")))?;
        if mask.is_zero() {
            return Err(Error::InvalidArgument(
                "constrained decoding: the grammar allows no token here".into(),
            ));
        }
        Ok(mask)
    }

    /// Advances past `token` (one [`Self::allowed`] returned).
    pub(crate) fn advance(&mut self, token: u32) -> Result<()> {
        self.0
            .consume_token(token)
            .map_err(|e| Error::InvalidArgument(format!("constrained decoding: {e}")))
    }
}

/// Sets every log-prob the mask does not allow to −∞.
pub(crate) fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    for (i, l) in logits.iter_mut().enumerate() {
        if !mask.is_allowed(i as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
}
