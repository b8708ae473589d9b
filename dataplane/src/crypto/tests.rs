//! Every backend against published vectors and against each other.

use super::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn nonce(bytes: &[u8]) -> [u8; NONCE_LEN] {
    bytes.try_into().unwrap()
}

struct Vector {
    suite: Suite,
    key: &'static str,
    iv: &'static str,
    aad: &'static str,
    plaintext: &'static str,
    ciphertext: &'static str,
    tag: &'static str,
}

const TC3_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
const TC4_PT: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";

/// The GCM test cases of the specification submitted to NIST (McGrew and Viega, test cases
/// 2, 3, 4, 14, 15 and 16), and RFC 8439 §2.8.2 for ChaCha20-Poly1305.
const VECTORS: &[Vector] = &[
    Vector {
        suite: Suite::AesGcm128,
        key: "00000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        plaintext: "00000000000000000000000000000000",
        ciphertext: "0388dace60b6a392f328c2b971b2fe78",
        tag: "ab6e47d42cec13bdf53a67b21257bddf",
    },
    Vector {
        suite: Suite::AesGcm128,
        key: "feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "",
        plaintext: TC3_PT,
        ciphertext: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
        tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
    },
    Vector {
        suite: Suite::AesGcm128,
        key: "feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        plaintext: TC4_PT,
        ciphertext: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        tag: "5bc94fbc3221a5db94fae95ae7121a47",
    },
    Vector {
        suite: Suite::AesGcm256,
        key: "0000000000000000000000000000000000000000000000000000000000000000",
        iv: "000000000000000000000000",
        aad: "",
        plaintext: "00000000000000000000000000000000",
        ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
        tag: "d0d1c8a799996bf0265b98b5d48ab919",
    },
    Vector {
        suite: Suite::AesGcm256,
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "",
        plaintext: TC3_PT,
        ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
        tag: "b094dac5d93471bdec1a502270e3cc6c",
    },
    Vector {
        suite: Suite::AesGcm256,
        key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        iv: "cafebabefacedbaddecaf888",
        aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        plaintext: TC4_PT,
        ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        tag: "76fc6ece0f4e1768cddf8853bb2d551b",
    },
    Vector {
        suite: Suite::ChaCha20Poly1305,
        key: "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
        iv: "070000004041424344454647",
        aad: "50515253c0c1c2c3c4c5c6c7",
        plaintext: "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a204966204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f7220746865206675747572652c2073756e73637265656e20776f756c642062652069742e",
        ciphertext: "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116",
        tag: "1ae10b594f09e26a7e902ecbd0600691",
    },
];

#[test]
fn published_vectors_pass_on_every_backend() {
    for backend in Backend::ALL {
        for (i, v) in VECTORS.iter().enumerate() {
            let cipher = backend.cipher(v.suite, &h(v.key)).unwrap();
            let mut buf = h(v.plaintext);
            let tag = cipher
                .seal_in_place(&nonce(&h(v.iv)), &h(v.aad), &mut buf)
                .unwrap();
            assert_eq!(
                hex::encode(&buf),
                v.ciphertext,
                "{backend} vector {i} ciphertext"
            );
            assert_eq!(hex::encode(tag), v.tag, "{backend} vector {i} tag");
            cipher
                .open_in_place(&nonce(&h(v.iv)), &h(v.aad), &mut buf, &tag)
                .unwrap();
            assert_eq!(
                hex::encode(&buf),
                v.plaintext,
                "{backend} vector {i} plaintext"
            );
        }
    }
}

#[test]
fn every_suite_round_trips_and_all_backends_agree() {
    for suite in Suite::ALL {
        let key: Vec<u8> = (0..suite.key_len() as u8).collect();
        let n = nonce(&[9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2]);
        for len in [0usize, 1, 15, 16, 17, 1400, 9000] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut outputs = Vec::new();
            for backend in Backend::ALL {
                let cipher = backend.cipher(suite, &key).unwrap();
                assert_eq!(cipher.suite(), suite);
                assert_eq!(cipher.backend(), backend);
                let mut buf = plaintext.clone();
                let tag = cipher.seal_in_place(&n, b"header", &mut buf).unwrap();
                if len > 0 {
                    assert_ne!(
                        buf, plaintext,
                        "{backend} {suite} left {len} bytes in clear"
                    );
                }
                outputs.push((buf.clone(), tag));
                cipher.open_in_place(&n, b"header", &mut buf, &tag).unwrap();
                assert_eq!(buf, plaintext, "{backend} {suite} {len}");
            }
            assert!(
                outputs.windows(2).all(|w| w[0] == w[1]),
                "{suite} {len}: backends disagree"
            );
        }
    }
}

#[test]
fn altered_ciphertext_aad_or_tag_fails_on_every_backend() {
    for backend in Backend::ALL {
        for suite in [Suite::AesGcm128, Suite::AesGcm256, Suite::ChaCha20Poly1305] {
            let cipher = backend.cipher(suite, &vec![7; suite.key_len()]).unwrap();
            let n = nonce(&[1; 12]);
            let mut buf = vec![0xab; 64];
            let tag = cipher.seal_in_place(&n, b"aad", &mut buf).unwrap();
            let mut bad = buf.clone();
            bad[10] ^= 1;
            assert_eq!(
                cipher.open_in_place(&n, b"aad", &mut bad, &tag),
                Err(Error::AuthenticationFailed)
            );
            let mut copy = buf.clone();
            assert!(cipher.open_in_place(&n, b"aaD", &mut copy, &tag).is_err());
            let mut bad_tag = tag;
            bad_tag[15] ^= 0x80;
            let mut copy = buf.clone();
            assert!(cipher
                .open_in_place(&n, b"aad", &mut copy, &bad_tag)
                .is_err());
            let mut copy = buf.clone();
            assert!(cipher
                .open_in_place(&nonce(&[2; 12]), b"aad", &mut copy, &tag)
                .is_err());
        }
    }
}

#[test]
fn wrong_key_length_is_a_typed_error() {
    for backend in Backend::ALL {
        assert_eq!(
            backend.cipher(Suite::AesGcm256, &[0; 16]).unwrap_err(),
            Error::BadKeyLength {
                suite: Suite::AesGcm256,
                expected: 32,
                got: 16
            }
        );
    }
}

#[test]
fn names_parse_back() {
    for suite in Suite::ALL {
        assert_eq!(suite.name().parse::<Suite>().unwrap(), suite);
        assert_eq!(Suite::from_version(suite.version()).unwrap(), suite);
    }
    for backend in Backend::ALL {
        assert_eq!(backend.name().parse::<Backend>().unwrap(), backend);
    }
    assert!("aes-ccm"
        .parse::<Suite>()
        .unwrap_err()
        .contains("aes-gcm-256"));
}
