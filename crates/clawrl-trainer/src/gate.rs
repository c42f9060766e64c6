//! A gate through which another part of the process holds training back at fine-grained
//! points (each projection's forward and backward): the server holds it while a request waits
//! for its first token, so a training step costs serving's latency almost nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Shared by whoever holds training back and the policy that waits.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<AtomicUsize>);

/// While alive, training waits at its next gate point.
#[derive(Debug)]
pub struct Hold(Arc<AtomicUsize>);

impl Gate {
    /// Holds training back until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        self.0.fetch_add(1, Ordering::AcqRel);
        Hold(self.0.clone())
    }

    /// Waits while anyone holds the gate.
    pub(crate) fn wait(&self) {
        while self.0.load(Ordering::Acquire) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_blocks_until_dropped() {
        let gate = Gate::default();
        let hold = gate.hold();
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.wait();
                std::time::Instant::now()
            })
        };
        std::thread::sleep(Duration::from_millis(30));
        let released = std::time::Instant::now();
        drop(hold);
        let passed = waiter.join().expect("waiter");
        assert!(passed >= released);
        gate.wait();
    }
}
