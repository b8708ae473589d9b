//! `GET /v1/stages` and `POST /v1/stages`: where a packet's time goes inside each worker,
//! and turning the sampling that measures it on or off while the appliance runs.
//!
//! Sampling is off unless asked for (the engine then reads no clock per packet). Turning
//! it on, changing it or turning it off forgets the samples taken so far, so a reading
//! always covers one setting; each change is reported to the audit log like a reload.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cpclink_dataplane::engine::{EngineStats, StageSummary, StageTimes};
use cpclink_mgmt::{echo, problem, Caller};
use serde::{Deserialize, Serialize};

use super::Api;

/// One stage's figures as the API shows them, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageView {
    /// The stage (`tun_read`, `seal`, `batch_wait`, …; see the engine's `Stage`).
    pub stage: String,
    /// Samples: timed packets, or loop turns for `tx_turn`/`rx_turn`.
    pub count: u64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Longest, µs.
    pub max_us: f64,
}

impl From<StageSummary> for StageView {
    fn from(s: StageSummary) -> Self {
        let us = |ns: u64| ns as f64 / 1e3;
        Self {
            stage: s.stage.name().to_owned(),
            count: s.samples,
            p50_us: us(s.p50_ns),
            p99_us: us(s.p99_ns),
            p999_us: us(s.p999_ns),
            max_us: us(s.max_ns),
        }
    }
}

/// One worker's stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStages {
    /// The worker's index.
    pub worker: usize,
    /// Its stages with samples, in the order a packet meets them.
    pub stages: Vec<StageView>,
}

/// What `GET /v1/stages` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StagesReport {
    /// One packet in this many is timed per stage and direction; 0: sampling is off.
    pub sample_every: u32,
    /// Per worker, in worker order.
    pub workers: Vec<WorkerStages>,
    /// All workers merged.
    pub all: Vec<StageView>,
}

impl StagesReport {
    /// The report of an engine sampling one packet in `sample_every`, from its counters.
    pub fn new(sample_every: u32, stats: &EngineStats) -> Self {
        let views = |t: &StageTimes| t.summary().into_iter().map(StageView::from).collect();
        Self {
            sample_every,
            workers: stats
                .stages
                .iter()
                .enumerate()
                .map(|(worker, t)| WorkerStages {
                    worker,
                    stages: views(t),
                })
                .collect(),
            all: views(&stats.stage_times()),
        }
    }
}

/// The body of `POST /v1/stages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetSampling {
    sample_every: u32,
}

/// `GET /v1/stages`.
pub(super) async fn show(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "GET /v1/stages") {
        return *r;
    }
    match api.engine.snapshot() {
        Ok(stats) => echo(
            &headers,
            Json(StagesReport::new(api.engine.stage_sample_every(), &stats)).into_response(),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "data plane",
            &e.to_string(),
        ),
    }
}

/// `POST /v1/stages {"sample_every": N}`.
pub(super) async fn set(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = api.in_scope(&headers, &caller, "POST /v1/stages") {
        return *r;
    }
    let asked: SetSampling = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return problem(
                &headers,
                StatusCode::BAD_REQUEST,
                "bad request",
                &format!(
                    "body: {e}; send {{\"sample_every\": N}}: N = 0 turns sampling off, N ≥ 1 times one packet in N"
                ),
            )
        }
    };
    let every = asked.sample_every;
    match api
        .handle
        .set_stage_sampling(every, &format!("api:{}", caller.name))
        .await
    {
        Ok(()) => echo(
            &headers,
            Json(serde_json::json!({ "sample_every": every })).into_response(),
        ),
        Err(e) => problem(
            &headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "data plane",
            &e.to_string(),
        ),
    }
}
