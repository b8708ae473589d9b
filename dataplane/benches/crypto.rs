//! Criterion micro-benchmarks: AEAD seal per backend and suite, and whole-packet PSP
//! seal/open through the SAs, at the sizes the data plane carries.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use cpclink_dataplane::crypto::{Aead, Backend, Suite};
use cpclink_dataplane::psp::nonce;
use cpclink_dataplane::sa::{MasterKeys, RxSa, SaLimits, Spi, TxSa};

const SIZES: [usize; 3] = [64, 1400, 9000];

fn aead_seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("aead_seal");
    for backend in Backend::ALL {
        for suite in [Suite::AesGcm256, Suite::ChaCha20Poly1305] {
            let cipher = backend.cipher(suite, &vec![7; suite.key_len()]).unwrap();
            for size in SIZES {
                let mut buf = vec![0u8; size];
                let mut iv = 0u64;
                group.throughput(Throughput::Bytes(size as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("{backend}/{suite}"), size),
                    &size,
                    |b, _| {
                        b.iter(|| {
                            iv += 1;
                            black_box(
                                cipher
                                    .seal_in_place(&nonce(Spi(1), iv), &[0; 16], &mut buf)
                                    .ok(),
                            )
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

fn psp_packet(c: &mut Criterion) {
    let keys = MasterKeys::new([9; 32]);
    let spi = Spi(3);
    let key = keys.derive(spi, Suite::AesGcm256).unwrap();
    let limits = SaLimits {
        hard_packets: u64::MAX,
        ..SaLimits::default()
    };
    let mut group = c.benchmark_group("psp_packet");
    for size in SIZES {
        let mut tx = TxSa::from_key(
            spi,
            Backend::AwsLc,
            Suite::AesGcm256,
            &key,
            limits,
            Instant::now(),
        )
        .unwrap();
        let mut packet = vec![0u8; 16 + size + 16];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("seal", size), &size, |b, _| {
            b.iter(|| black_box(tx.seal(4, 0, &mut packet).ok()))
        });
        // Open a fresh sealed packet each time so the replay window accepts it.
        let cipher = Backend::AwsLc
            .cipher(Suite::AesGcm256, key.as_bytes())
            .unwrap();
        let mut rx = RxSa::new(spi, cipher, limits);
        let mut scratch = packet.clone();
        group.bench_with_input(BenchmarkId::new("seal+open", size), &size, |b, _| {
            b.iter(|| {
                let _ = tx.seal(4, 0, &mut scratch);
                black_box(rx.open(&mut scratch).ok())
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = aead_seal, psp_packet
}
criterion_main!(benches);
