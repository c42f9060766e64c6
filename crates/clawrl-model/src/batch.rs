//! Continuous batching: concurrent generations decode together, one model step for all of
//! them, and the serving figure is tokens per second across sessions. On the CPU each chunk
//! of weights is read from memory once per step for every sequence; on a GPU each sequence
//! is a grid row of the matrix–vector kernel, the weights shared through its cache.
//!
//! A generation is prefilled on its caller's thread, in the global compute pool, so prompts
//! of different lengths do not wait for one another. Then it joins the decode loop, which
//! runs on a pool of its own (so a prefill is never taken up inside a decode step, stalling
//! the batch). Each step runs [`Policy::forward_batch`] over every sequence in flight,
//! samples each one's token with its own sampler and grammar, and drops the finished ones;
//! a sequence that arrives joins at the next step. Each sequence's tokens are those it would
//! get alone ([`Policy::forward_batch`] keeps rows independent; bit for bit on the CPU).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use tracing::{error, trace_span};

use crate::adapter::LoraAdapter;
use crate::error::{Error, Result};
use crate::generate::{Decoding, GenerateParams, Generation, Step, TokenInfo};
use crate::model::{Model, in_pool};

/// Sequences decoded together in one step, at most, unless the caller says otherwise: the
/// figure the serving targets are set at (32 concurrent sessions).
pub const DEFAULT_MAX_BATCH: usize = 32;

/// The per-token callback of a batched generation: the token and the text that became final
/// with it; `Break` ends the generation ([`crate::FinishReason::Cancelled`]).
pub type OnToken = Box<dyn FnMut(&TokenInfo, &str) -> ControlFlow<()> + Send>;

/// Decodes concurrent generations of one model together (continuous batching). Cheap to
/// share: [`Batcher::generate`] takes `&self` and blocks its caller until its generation
/// ends; the decode loop lives as long as the batcher.
pub struct Batcher {
    /// Prefilled sequences waiting to join the decode loop. Declared first so that it
    /// closes, ending the loop, before the pool is released.
    joining: Mutex<Sender<Sequence>>,
    model: Arc<Model>,
    /// The decode loop's threads, as many as the global pool's.
    _pool: rayon::ThreadPool,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// A sequence in flight in the decode loop.
struct Sequence {
    decoding: Decoding,
    /// The token to feed at the next step.
    next: u32,
    adapter: Option<Arc<LoraAdapter>>,
    on_token: OnToken,
    done: SyncSender<Result<Generation>>,
}

impl Batcher {
    /// Starts the decode loop for `model` on a pool of its own, stepping at most
    /// `max_batch` sequences at once (`max_batch` is at least 1). Sequences beyond it wait,
    /// prefilled, for a place: with `max_batch` 1 they decode one after another.
    ///
    /// # Errors
    /// [`Error::Decode`] when the pool's threads cannot be started.
    pub fn new(model: Arc<Model>, max_batch: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("clawrl-decode-{i}"))
            .build()
            .map_err(|e| Error::Decode(format!("cannot start the decode threads: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let decoder = model.clone();
        pool.spawn(move || decode_loop(&decoder, &rx, max_batch.max(1)));
        Ok(Self {
            joining: Mutex::new(tx),
            model,
            _pool: pool,
        })
    }

    /// Generates a response to `prompt` with `adapter` on top, as
    /// [`crate::Policy::generate`] does, decoding beside every other generation in flight.
    /// Prefill and the first token happen on the calling thread; then the call blocks until
    /// the generation ends. Later calls of `on_token` run on the decode pool, beside other
    /// sequences' callbacks; every sequence in flight waits for them, so they must not block.
    /// A panic in a later call fails this generation only.
    ///
    /// # Errors
    /// As [`crate::Policy::generate`]; [`Error::Decode`] if the decode step failed (a
    /// panic in a kernel, reported in the log).
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        adapter: Option<Arc<LoraAdapter>>,
        mut on_token: OnToken,
    ) -> Result<Generation> {
        let policy = self.model.policy(adapter.as_deref());
        let (mut decoding, logits) = in_pool(|| Decoding::start(policy, prompt, params.clone()))?;
        let next = match decoding.step(&self.model, logits, &mut on_token)? {
            Step::Next(id) => id,
            Step::Done(finish) => return Ok(decoding.finish(finish)),
        };
        let (done, result) = mpsc::sync_channel(1);
        let sequence = Sequence {
            decoding,
            next,
            adapter,
            on_token,
            done,
        };
        let stopped = || Error::Decode("the decode loop has stopped".into());
        self.joining
            .lock()
            .map_err(|_| stopped())?
            .send(sequence)
            .map_err(|_| stopped())?;
        result.recv().map_err(|_| stopped())?
    }
}

/// The decode loop: admit joining sequences, step every one in flight, repeat; returns
/// when the batcher is dropped and nothing is in flight.
fn decode_loop(model: &Model, joining: &Receiver<Sequence>, max_batch: usize) {
    let mut active: Vec<Sequence> = Vec::new();
    loop {
        if active.is_empty() {
            match joining.recv() {
                Ok(s) => active.push(s),
                Err(_) => return,
            }
        }
        while active.len() < max_batch {
            match joining.try_recv() {
                Ok(s) => active.push(s),
                Err(_) => break,
            }
        }
        // One forward pass per adapter in flight: a publish between requests leaves old and
        // new versions decoding side by side for a while.
        let mut groups: BTreeMap<Option<u64>, Vec<Sequence>> = BTreeMap::new();
        for s in active.drain(..) {
            groups
                .entry(s.adapter.as_ref().map(|a| a.id()))
                .or_default()
                .push(s);
        }
        for (_, group) in groups {
            active.extend(step(model, group));
        }
    }
}

/// One decode step of `group` (sequences sharing an adapter); returns those still going and
/// hands every finished one its result. A panic fails this group only.
fn step(model: &Model, mut group: Vec<Sequence>) -> Vec<Sequence> {
    let _span = trace_span!("batch_step", sequences = group.len()).entered();
    let outcomes = catch_unwind(AssertUnwindSafe(|| forward_and_sample(model, &mut group)));
    let outcomes = match outcomes {
        Ok(Ok(outcomes)) => outcomes,
        Ok(Err(e)) => {
            fail(group, &e.to_string());
            return Vec::new();
        }
        Err(_) => {
            error!(
                sequences = group.len(),
                "a batched decode step panicked; its sequences fail"
            );
            fail(group, "a decode step panicked (see the server log)");
            return Vec::new();
        }
    };
    let mut going = Vec::with_capacity(group.len());
    for (mut s, outcome) in group.into_iter().zip(outcomes) {
        match outcome {
            Ok(Step::Next(id)) => {
                s.next = id;
                going.push(s);
            }
            Ok(Step::Done(finish)) => {
                // A caller that gave up waiting has nobody to tell.
                let _ = s.done.send(Ok(s.decoding.finish(finish)));
            }
            Err(e) => {
                let _ = s.done.send(Err(e));
            }
        }
    }
    going
}

/// The model over every sequence's next token at once, then each one's own sampling (its
/// sampler, grammar and callback), in parallel.
fn forward_and_sample(model: &Model, group: &mut [Sequence]) -> Result<Vec<Result<Step>>> {
    let adapter = group[0].adapter.clone();
    let mut steps: Vec<_> = group
        .iter_mut()
        .map(|s| (s.next, &mut s.decoding.cache))
        .collect();
    let logits = model.policy(adapter.as_deref()).forward_batch(&mut steps)?;
    let vocab = model.config.vocab_size;
    Ok(in_pool(|| {
        group
            .par_iter_mut()
            .zip(logits.par_chunks_exact(vocab))
            .map(|(s, row)| {
                catch_unwind(AssertUnwindSafe(|| {
                    s.decoding.step(model, row.to_vec(), &mut s.on_token)
                }))
                .unwrap_or_else(|_| {
                    error!("a generation's sampling or callback panicked; it fails");
                    Err(Error::Decode(
                        "sampling panicked (see the server log)".into(),
                    ))
                })
            })
            .collect()
    }))
}

/// Ends every sequence of `group` with an [`Error::Decode`] saying `why`.
fn fail(group: Vec<Sequence>, why: &str) {
    for s in group {
        let _ = s.done.send(Err(Error::Decode(why.to_string())));
    }
}
