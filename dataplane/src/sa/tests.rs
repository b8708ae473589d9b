use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;

fn pair(limits: SaLimits) -> (TxSa, RxSa) {
    let keys = MasterKeys::new([3; 32]);
    let spi = Spi(42);
    let key = keys.derive(spi, Suite::AesGcm256).unwrap();
    let now = Instant::now();
    let tx = TxSa::from_key(spi, Backend::AwsLc, Suite::AesGcm256, &key, limits, now).unwrap();
    let rx = RxSa::new(
        spi,
        Backend::Ring
            .cipher(Suite::AesGcm256, key.as_bytes())
            .unwrap(),
        limits,
    );
    (tx, rx)
}

fn sealed(tx: &mut TxSa, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 16 + body.len() + 16];
    packet[16..16 + body.len()].copy_from_slice(body);
    tx.seal(4, 0, &mut packet).unwrap();
    packet
}

#[test]
fn tx_and_rx_of_different_backends_interoperate() {
    let (mut tx, mut rx) = pair(SaLimits::default());
    for i in 0..100u8 {
        let mut packet = sealed(&mut tx, &[i; 64]);
        let opened = rx.open(&mut packet).unwrap();
        assert_eq!(&packet[opened.payload], &[i; 64]);
        assert_eq!(
            opened.header.iv,
            u64::from(i) + 1,
            "IVs start at 1 and count up"
        );
    }
    assert_eq!(tx.sealed(), 100);
    assert_eq!(rx.stats().accepted, 100);
}

#[test]
fn replayed_and_too_old_packets_are_rejected_and_counted() {
    let (mut tx, mut rx) = pair(SaLimits::default());
    let first = sealed(&mut tx, b"first");
    let mut copy = first.clone();
    rx.open(&mut copy).unwrap();
    let mut copy = first.clone();
    assert_eq!(rx.open(&mut copy).unwrap_err(), Error::Replayed(1));
    for _ in 0..REPLAY_WINDOW + 1 {
        let mut p = sealed(&mut tx, b"x");
        rx.open(&mut p).unwrap();
    }
    let mut copy = first.clone();
    assert!(matches!(
        rx.open(&mut copy),
        Err(Error::TooOld { iv: 1, .. })
    ));
    let stats = rx.stats();
    assert_eq!(
        (stats.replayed, stats.too_old, stats.accepted),
        (1, 1, REPLAY_WINDOW + 2)
    );
}

#[test]
fn a_forged_packet_does_not_move_the_window() {
    let (mut tx, mut rx) = pair(SaLimits::default());
    let mut forged = sealed(&mut tx, b"payload");
    let mut genuine = forged.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        rx.open(&mut forged).unwrap_err(),
        Error::AuthenticationFailed
    );
    rx.open(&mut genuine)
        .expect("the genuine packet with the same IV still opens");
    assert_eq!(rx.stats().auth_failed, 1);
}

#[test]
fn sealing_with_an_exhausted_sa_is_an_error_not_a_wrap() {
    let limits = SaLimits {
        soft_packets: 2,
        hard_packets: 4,
        ..SaLimits::default()
    };
    let (mut tx, mut rx) = pair(limits);
    let now = Instant::now();
    assert_eq!(tx.state(now), TxSaState::Fresh);
    for _ in 0..3 {
        let mut p = sealed(&mut tx, b"x");
        rx.open(&mut p).unwrap();
    }
    assert_eq!(tx.state(now), TxSaState::Exhausted);
    let mut packet = vec![0u8; 40];
    assert_eq!(
        tx.seal(4, 0, &mut packet).unwrap_err(),
        Error::SaExhausted { spi: 42, sealed: 3 }
    );
    assert_eq!(packet, vec![0u8; 40], "nothing written by a refused seal");
}

#[test]
fn soft_limits_ask_for_a_rekey_and_hard_lifetime_expires() {
    let limits = SaLimits {
        soft_packets: 2,
        soft_lifetime: Duration::from_secs(10),
        hard_lifetime: Duration::from_secs(20),
        ..SaLimits::default()
    };
    let (mut tx, _) = pair(limits);
    let start = Instant::now();
    sealed(&mut tx, b"1");
    assert_eq!(tx.state(start), TxSaState::Fresh);
    sealed(&mut tx, b"2");
    assert_eq!(tx.state(start), TxSaState::RekeyDue);
    let (mut tx, _) = pair(limits);
    assert_eq!(
        tx.state(start + Duration::from_secs(11)),
        TxSaState::RekeyDue
    );
    assert_eq!(
        tx.state(start + Duration::from_secs(21)),
        TxSaState::Exhausted
    );
    let mut packet = vec![0u8; 40];
    assert_eq!(
        tx.seal(4, 0, &mut packet).unwrap_err(),
        Error::SaExpired(42)
    );
}

#[test]
fn receiver_rejects_iv_zero_and_at_the_hard_limit() {
    let limits = SaLimits {
        hard_packets: 1 << 32,
        ..SaLimits::default()
    };
    let (mut tx, mut rx) = pair(limits);
    let mut packet = sealed(&mut tx, b"x");
    for iv in [0u64, 1 << 32] {
        packet[8..16].copy_from_slice(&iv.to_be_bytes());
        assert!(matches!(
            rx.open(&mut packet.clone()),
            Err(Error::IvOutOfRange { .. })
        ));
    }
    assert_eq!(rx.stats().iv_out_of_range, 2);
}

#[test]
fn wrong_spi_is_rejected() {
    let (mut tx, mut rx) = pair(SaLimits::default());
    let mut packet = sealed(&mut tx, b"x");
    packet[4..8].copy_from_slice(&43u32.to_be_bytes());
    assert_eq!(
        rx.open(&mut packet).unwrap_err(),
        Error::SpiMismatch {
            expected: 42,
            got: 43
        }
    );
    assert_eq!(rx.stats().malformed, 1);
}

#[test]
fn spi_bit_31_selects_generation_1() {
    let mut keys = MasterKeys::new([1; 32]);
    let spi0 = Spi(7);
    let spi1 = Spi(7 | 1 << 31);
    assert_eq!((spi0.generation(), spi1.generation()), (0, 1));
    assert_eq!(spi1.index(), 7);
    assert_eq!(
        keys.derive(spi1, Suite::AesGcm256).unwrap_err(),
        Error::NoMasterKey(1)
    );
    assert_eq!(keys.rotate([2; 32]), 1);
    assert_eq!(keys.current_generation(), 1);
    let k1 = keys.derive(spi1, Suite::AesGcm256).unwrap();
    assert_eq!(
        k1.as_bytes(),
        derive_sa_key(&[2; 32], spi1, Suite::AesGcm256).as_bytes()
    );
    let k0 = keys.derive(spi0, Suite::AesGcm256).unwrap();
    assert_eq!(
        k0.as_bytes(),
        derive_sa_key(&[1; 32], spi0, Suite::AesGcm256).as_bytes()
    );
    assert_eq!(
        keys.rotate([3; 32]),
        0,
        "the next rotation replaces generation 0"
    );
    assert_ne!(
        keys.derive(spi0, Suite::AesGcm256).unwrap().as_bytes(),
        k0.as_bytes()
    );
}

#[test]
fn spi_allocator_is_monotonic_per_generation_and_resumes() {
    let mut spis = SpiAllocator::default();
    let a = spis.allocate(0).unwrap();
    let b = spis.allocate(0).unwrap();
    let c = spis.allocate(1).unwrap();
    assert_eq!((a, b, c), (Spi(1), Spi(2), Spi(1 | 1 << 31)));
    let mut resumed = SpiAllocator::resume(spis.next_indices());
    assert_eq!(resumed.allocate(0).unwrap(), Spi(3));
    let mut full = SpiAllocator::resume([u32::MAX >> 1, 1]);
    assert_eq!(full.allocate(0).unwrap(), Spi(0x7fff_ffff));
    assert_eq!(full.allocate(0).unwrap_err(), Error::SpiSpaceExhausted(0));
    assert_eq!(full.allocate(1).unwrap(), Spi(1 | 1 << 31));
}

proptest! {
    /// The window against a model that remembers every IV ever accepted.
    #[test]
    fn replay_window_matches_a_simple_model(ops in proptest::collection::vec(
        prop_oneof![
            3 => (1u64..20).prop_map(|d| (true, d)),        // a step forward
            2 => (0u64..10_000).prop_map(|d| (false, d)),   // a step back from the top
        ], 1..600))
    {
        let mut window = ReplayWindow::default();
        let mut seen = BTreeSet::new();
        let mut top = 0u64;
        for (forward, delta) in ops {
            let iv = if forward { top + delta } else { top.saturating_sub(delta).max(1) };
            let highest = seen.iter().next_back().copied().unwrap_or(0);
            let expected = if iv > highest {
                Ok(())
            } else if highest - iv >= REPLAY_WINDOW {
                Err(Error::TooOld { iv, highest })
            } else if seen.contains(&iv) {
                Err(Error::Replayed(iv))
            } else {
                Ok(())
            };
            prop_assert_eq!(window.check(iv), expected.clone());
            if expected.is_ok() {
                window.update(iv);
                seen.insert(iv);
                top = top.max(iv);
            }
        }
    }
}

proptest! {
    /// Whatever arrives, opening neither panics nor yields plaintext it did not verify.
    #[test]
    fn arbitrary_bytes_never_open(mut data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (_, mut rx) = pair(SaLimits::default());
        if data.len() >= 8 {
            data[4..8].copy_from_slice(&42u32.to_be_bytes());
        }
        prop_assert!(rx.open(&mut data).is_err());
        prop_assert_eq!(rx.stats().accepted, 0);
    }
}

#[test]
fn the_whole_packet_seal_writes_the_same_bytes_as_the_general_path() {
    for suite in Suite::ALL {
        for backend in Backend::ALL {
            let key = vec![0x5a; suite.key_len()];
            let mut tx = TxSa::new(
                Spi(0x8000_0007),
                backend.cipher(suite, &key).unwrap(),
                SaLimits::default(),
                Instant::now(),
            );
            let cipher = backend.cipher(suite, &key).unwrap();
            for (next_header, len) in [(4u8, 1400usize), (41, 64), (4, 0)] {
                let body: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let fast = sealed_with_header(&mut tx, next_header, &body);
                let iv = tx.sealed();
                let repr = PspRepr {
                    next_header,
                    crypt_offset: 0,
                    sample: false,
                    drop_after_sampling: false,
                    suite,
                    spi: Spi(0x8000_0007),
                    iv,
                    vc: None,
                };
                let mut general = vec![0u8; 16 + len + 16];
                general[16..16 + len].copy_from_slice(&body);
                psp::seal_in_place(&cipher, &repr, &mut general).unwrap();
                assert_eq!(fast, general, "{backend}/{suite}, {len} bytes");
            }
        }
    }
}

fn sealed_with_header(tx: &mut TxSa, next_header: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; 16 + body.len() + 16];
    packet[16..16 + body.len()].copy_from_slice(body);
    tx.seal(next_header, 0, &mut packet).unwrap();
    packet
}
