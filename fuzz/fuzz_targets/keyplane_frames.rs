//! Any bytes on a key-plane stream (authority ↔ appliance, appliance ↔ appliance, admin
//! socket) go through the frame reader: nothing may panic, and every message read writes
//! back as a frame that reads as the same message.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use cpclink_keymgr::proto::{read_frame, write_frame, AdminReply, AdminRequest, Message};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Runs a future that never waits: reading from and writing to memory is always ready.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("in-memory I/O never waits"),
    }
}

/// Reads frames of `T` until the stream ends or a frame is refused; each one read must
/// survive a write and a read unchanged.
fn frames<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(mut stream: &[u8]) {
    for _ in 0..16 {
        match ready(read_frame::<_, T>(&mut stream)) {
            Ok(Some(message)) => {
                let mut out = Vec::new();
                ready(write_frame(&mut out, &message)).expect("a message read writes back");
                let again = ready(read_frame::<_, T>(&mut &out[..]))
                    .expect("a written frame reads")
                    .expect("a written frame is not the end");
                assert_eq!(again, message);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    frames::<Message>(data);
    frames::<AdminRequest>(data);
    frames::<AdminReply>(data);
});
