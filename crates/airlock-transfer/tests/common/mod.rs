//! What the diode tests share: genuine bundles, forged datagrams, and memory readings.
#![allow(
    dead_code,
    reason = "each test binary compiles this module and uses part of it"
)]

use std::path::{Path, PathBuf};

use airlock_bundle::{Limits, NoProgress, PackOptions, PrivateKey};
use airlock_transfer::announce::{Announce, Geometry};
use airlock_transfer::fec::encode_object;
use airlock_transfer::packet::{HEADER_LEN, Header, Kind};

/// A packed bundle and what its announce carries.
pub(crate) struct Genuine {
    pub(crate) path: PathBuf,
    pub(crate) signature: Vec<u8>,
    pub(crate) digest: [u8; 32],
    pub(crate) size: u64,
}

impl Genuine {
    /// The first 8 bytes of the digest, as every datagram of the bundle carries them.
    pub(crate) fn tag(&self) -> [u8; 8] {
        let mut tag = [0; 8];
        tag.copy_from_slice(&self.digest[..8]);
        tag
    }

    /// An announce carrying the genuine model.sig, with whatever geometry its sender chose.
    pub(crate) fn announce(&self, session: u64, geometry: Geometry) -> Announce {
        Announce {
            session,
            geometry,
            digest: self.digest,
            signature: self.signature.clone(),
        }
    }
}

/// Packs a model of `weights` bytes that repeat nowhere, as `airlock pack` does.
pub(crate) fn genuine_bundle(dir: &Path, weights: usize) -> Genuine {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let data: Vec<u8> = (0..weights).map(|_| rng.next() as u8).collect();
    let header =
        format!(r#"{{"w":{{"dtype":"U8","shape":[{weights}],"data_offsets":[0,{weights}]}}}}"#);
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(src.join("model.safetensors"), file).unwrap();
    std::fs::write(
        src.join("config.json"),
        r#"{"architectures":["BertModel"],"max_position_embeddings":512}"#,
    )
    .unwrap();
    let path = dir.join("tiny_1.0.0.airlock");
    let options = PackOptions {
        name: "tiny".into(),
        version: "1.0.0".into(),
        kind: Some("embedding".into()),
        license: Some("Apache-2.0".into()),
        ..PackOptions::default()
    };
    let key = PrivateKey::generate().unwrap();
    airlock_bundle::pack(
        &src,
        &options,
        &[key],
        &path,
        &Limits::default(),
        &NoProgress,
    )
    .unwrap();
    let (signature, digest, size) =
        airlock_transfer::sender::bundle_identity(&path, &Limits::default()).unwrap();
    Genuine {
        path,
        signature,
        digest: digest.0,
        size,
    }
}

/// A datagram with a valid checksum around `bytes`.
pub(crate) fn datagram(
    kind: Kind,
    session: u64,
    tag: [u8; 8],
    block: u32,
    esi: u32,
    bytes: &[u8],
) -> Vec<u8> {
    let mut d = vec![0u8; HEADER_LEN];
    d.extend_from_slice(bytes);
    Header {
        kind,
        session,
        digest_tag: tag,
        block,
        symbol: esi,
    }
    .seal(&mut d);
    d
}

/// The announce's datagrams: its source symbols and as many repair symbols.
pub(crate) fn announce_datagrams(announce: &Announce) -> Vec<Vec<u8>> {
    let body = announce.encode();
    let t = usize::from(announce.geometry.symbol_size);
    let k = body.len().div_ceil(t) as u32;
    let mut tag = [0; 8];
    tag.copy_from_slice(&announce.digest[..8]);
    encode_object(&body, t, 0, k.max(4))
        .into_iter()
        .map(|(esi, symbol)| {
            datagram(
                Kind::Announce,
                announce.session,
                tag,
                body.len() as u32,
                esi,
                &symbol,
            )
        })
        .collect()
}

/// Every file and directory under `dir`, depth first.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if path.is_dir() {
            out.extend(files_under(&path));
        }
    }
    out
}

/// xorshift64: forged traffic that is the same on every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
