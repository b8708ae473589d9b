//! The aws-lc-rs backend (default).

less_safe_key_aead!(
    /// An aws-lc-rs AEAD key.
    AwsLcAead,
    aws_lc_rs,
    open: |key, nonce, aad, tag, in_out| key.open_in_place_separate_tag(nonce, aad, tag, in_out)
);
