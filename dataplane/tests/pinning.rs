//! A worker asked to run on a core the machine lacks still runs, but the failed pin is counted
//! (`pin_failed`) instead of being dropped silently.

use cpclink_dataplane::engine::{Engine, EngineConfig};

#[test]
fn a_failed_pin_is_counted_and_the_worker_still_runs() {
    let mut config = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    config.workers = 2;
    // 1000 fits the kernel's affinity mask but no machine this runs on has it; 5000 does not
    // even fit the mask (it used to index past it).
    config.cores = vec![1000, 5000];
    let engine = Engine::start(config).unwrap();
    let stats = engine.snapshot().unwrap();
    assert_eq!(stats.workers.len(), 2);
    assert!(stats.workers.iter().all(|w| w.pin_failed == 1), "{stats:?}");
    assert_eq!(stats.total().pin_failed, 2);
}

#[test]
fn an_unpinned_engine_counts_no_failed_pin() {
    let engine = Engine::start(EngineConfig::new("127.0.0.1:0".parse().unwrap())).unwrap();
    assert_eq!(engine.snapshot().unwrap().total().pin_failed, 0);
}
