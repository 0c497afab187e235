//! What the SSH listener offers, and when it renews keys.
//!
//! **Algorithms** (issue 15, item 17): only what ssh-audit's hardening guide for OpenSSH keeps,
//! among what russh 0.65 implements, while a stock OpenSSH 9.2 agent still connects with its
//! defaults (it picks curve25519-sha256, chacha20-poly1305 or the first cipher of its `-c` list,
//! and an encrypt-then-MAC MAC only for CTR ciphers). Dropped from russh's defaults:
//! `diffie-hellman-group14-sha256` (2048-bit), group15/17 and group exchange (not in the guide),
//! the encrypt-and-MAC `hmac-sha2-256/512` (the `-etm` ones stay), SHA-1 `ssh-rsa` signatures,
//! and compression (none only: agents do not compress, and zlib before authentication is attack
//! surface). Strict key exchange (`kex-strict-s-v00@openssh.com`, against Terrapin) stays.
//!
//! **Rekeying** (issue 15, item 15): russh's defaults rekey after 1 GiB either way or one hour.
//! A rekey the *broker* starts drops a busy agent: until the agent's own KEXINIT arrives, russh
//! counts the agent's in-flight channel data and fails the connection ("Pending buffer limit
//! reached") past 2 × `window_size`, which three channels at full window exceed. A rekey the
//! *agent* starts is safe (it sends no channel data after its KEXINIT). So the broker never
//! starts one before OpenSSH would: OpenSSH rekeys each direction after 2^(2 × block size) cipher
//! blocks for 16-byte-block ciphers (AES-GCM, AES-CTR: 2^32 blocks = 64 GiB) and 1 GiB for
//! smaller blocks (chacha20-poly1305@openssh.com counts 8-byte blocks), or 2^31 packets, and has
//! no time limit unless `RekeyLimit` sets one (packet.c, `ssh_set_newkeys` and
//! `ssh_packet_need_rekeying`). The broker's limits sit above all of these, and russh counts
//! payload bytes (less than OpenSSH's padded blocks), so a stock agent always rekeys first; the
//! broker still rekeys a peer that never does.

use std::borrow::Cow;
use std::time::Duration;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Limits, Preferred, cipher, compression, kex, mac};

/// Key exchanges: the hybrid post-quantum ML-KEM (OpenSSH 9.9+) first, then curve25519 (what
/// OpenSSH 9.2 picks), then the guide's finite-field groups (4096 and 8192 bits).
const KEX: &[kex::Name] = &[
    kex::MLKEM768X25519_SHA256,
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::DH_G16_SHA512,
    kex::DH_G18_SHA512,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// AES-GCM moves about twice the bytes per CPU of ChaCha20 here; OpenSSH picks the first of
/// *its* list that we offer, so agents choose with `-c aes128-gcm@openssh.com`.
const CIPHERS: &[cipher::Name] = &[
    cipher::AES_128_GCM,
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// Encrypt-then-MAC only (used with the CTR ciphers; the AEAD ciphers carry their own tag).
const MACS: &[mac::Name] = &[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM];

/// Host key (ours is ed25519) and the signatures accepted from agents' keys: no SHA-1 RSA.
const KEYS: &[Algorithm] = &[
    Algorithm::Ed25519,
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP256,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP384,
    },
    Algorithm::Ecdsa {
        curve: EcdsaCurve::NistP521,
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha512),
    },
    Algorithm::Rsa {
        hash: Some(HashAlg::Sha256),
    },
];

/// The algorithm lists offered to agents.
pub(crate) fn preferred() -> Preferred {
    Preferred {
        kex: Cow::Borrowed(KEX),
        key: Cow::Borrowed(KEYS),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Borrowed(&[compression::NONE]),
        ..Preferred::default()
    }
}

/// The most data OpenSSH sends or receives under one key, with any cipher offered here:
/// 2^32 blocks of 16 bytes.
pub(crate) const OPENSSH_MAX_REKEY_BYTES: u64 = (1 << 32) * 16;

/// Bytes each way after which the broker starts a rekey itself: half again OpenSSH's largest
/// threshold.
pub(crate) const REKEY_BYTES: u64 = OPENSSH_MAX_REKEY_BYTES / 2 * 3;

/// No time limit in practice (OpenSSH has none by default); a year keeps timer arithmetic safe.
pub(crate) const REKEY_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// When the broker starts a rekey: never before a stock OpenSSH agent would (see the header).
pub(crate) fn rekey_limits() -> Limits {
    let bytes = usize::try_from(REKEY_BYTES).unwrap_or(usize::MAX);
    // Not `Limits::new`: it caps the byte limits at 1 GiB, which is what drops busy agents.
    Limits {
        rekey_write_limit: bytes,
        rekey_read_limit: bytes,
        rekey_time_limit: REKEY_TIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OpenSSH's rekey threshold in bytes for a cipher, as packet.c computes it from the block
    /// size in cipher.c (chacha20-poly1305@openssh.com: 8; AES: 16).
    fn openssh_threshold(cipher: &str) -> u64 {
        let block: u64 = if cipher.starts_with("chacha20") {
            8
        } else {
            16
        };
        if block >= 16 {
            (1u64 << (block * 2)) * block
        } else {
            1 << 30
        }
    }

    #[test]
    fn the_broker_never_rekeys_before_an_openssh_agent_would() {
        let limits = rekey_limits();
        for c in CIPHERS {
            let t = openssh_threshold(c.as_ref());
            assert!(
                limits.rekey_read_limit as u64 > t && limits.rekey_write_limit as u64 > t,
                "{}: broker rekeys at {} bytes, OpenSSH at {t}",
                c.as_ref(),
                limits.rekey_read_limit
            );
        }
        assert!(limits.rekey_time_limit >= Duration::from_secs(30 * 24 * 3600));
    }

    #[test]
    fn only_what_the_hardening_guide_keeps() {
        let p = preferred();
        let kex: Vec<&str> = p.kex.iter().map(AsRef::as_ref).collect();
        for weak in [
            "diffie-hellman-group14-sha256",
            "diffie-hellman-group14-sha1",
            "diffie-hellman-group-exchange-sha1",
        ] {
            assert!(!kex.contains(&weak), "{weak}");
        }
        assert!(kex.contains(&"curve25519-sha256"), "OpenSSH 9.2's choice");
        assert!(kex.contains(&"kex-strict-s-v00@openssh.com"), "Terrapin");
        let macs: Vec<&str> = p.mac.iter().map(AsRef::as_ref).collect();
        assert!(
            macs.iter().all(|m| m.ends_with("-etm@openssh.com")),
            "{macs:?}"
        );
        assert!(!p.key.contains(&Algorithm::Rsa { hash: None }));
        let ciphers: Vec<&str> = p.cipher.iter().map(AsRef::as_ref).collect();
        assert!(
            ciphers.contains(&"chacha20-poly1305@openssh.com"),
            "OpenSSH's default"
        );
    }
}
