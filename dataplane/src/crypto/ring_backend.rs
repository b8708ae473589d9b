//! The ring backend.

less_safe_key_aead!(
    /// A ring AEAD key.
    RingAead,
    ring,
    open: |key, nonce, aad, tag, in_out| {
        key.open_in_place_separate_tag(nonce, aad, ring::aead::Tag::from(*tag), in_out, 0..)
    }
);
