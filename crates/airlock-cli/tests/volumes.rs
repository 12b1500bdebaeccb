//! Media volumes: split, join, and verify or import straight from a volume directory. Each
//! fault names the volume: missing, duplicated, truncated, corrupt, from another bundle.

use std::path::{Path, PathBuf};

use crate::registry::Site;
use crate::support::{Run, airlock, assert_refused, flip_byte, run};

/// A bundle of about 3 MiB cut into 1.5 MiB volumes (three of them).
fn split_bundle(site: &Site, label: &str, version: &str) -> (PathBuf, PathBuf) {
    let src = site.ws.safetensors_model(&format!("src-{label}"));
    let weights: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 253) as u8).collect();
    std::fs::write(
        src.join("model.safetensors"),
        airlock_testkit::safetensors::build_with_data("w", "U8", &weights),
    )
    .unwrap();
    let bundle = site.ws.path(&format!("{label}.airlock"));
    run(airlock()
        .arg("pack")
        .arg(&src)
        .args([
            "--name",
            "big",
            "--version",
            version,
            "--license",
            "MIT",
            "--key",
        ])
        .arg(site.ws.key("publisher"))
        .arg("-o")
        .arg(&bundle))
    .ok();
    let dir = site.ws.path(&format!("{label}-volumes"));
    run(airlock()
        .arg("split")
        .arg(&bundle)
        .args(["--size", "1536K", "-o"])
        .arg(&dir))
    .ok();
    (bundle, dir)
}

fn volumes(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn verify(site: &Site, target: &Path) -> Run {
    site.ws.verify(target, &[])
}

fn join(dir: &Path, out: &Path) -> Run {
    run(airlock().arg("join").arg(dir).arg("-o").arg(out))
}

#[test]
fn split_join_verify_round_trips_byte_for_byte() {
    let site = Site::new();
    let (bundle, dir) = split_bundle(&site, "a", "1.0.0");
    let parts = volumes(&dir);
    assert_eq!(parts.len(), 3);
    assert!(
        parts[0]
            .to_string_lossy()
            .ends_with("big_1.0.0.airlock.001-of-003")
    );
    let joined = site.ws.path("joined.airlock");
    join(&dir, &joined).ok();
    assert!(std::fs::read(&joined).unwrap() == std::fs::read(&bundle).unwrap());
    verify(&site, &joined).ok();
}

#[test]
fn verify_and_import_read_a_volume_directory_directly_in_any_order() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    // Names do not decide the order; headers do.
    let parts = volumes(&dir);
    std::fs::rename(&parts[0], dir.join("zzz.airlock.009-of-009")).unwrap();
    std::fs::rename(&parts[2], dir.join("aaa.airlock.001-of-001")).unwrap();
    let verified = verify(&site, &dir).ok().json();
    assert_eq!(verified["name"], "big");
    let imported = site.import(&dir).ok().json();
    assert_eq!(imported["state"], "quarantined");
    assert_eq!(site.cmd(&["fsck", "--json"]).ok().json()["clean"], true);
}

#[test]
fn a_missing_volume_is_named() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    std::fs::remove_file(&volumes(&dir)[1]).unwrap();
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_missing");
    assert!(run.stderr.contains("volume 2 of 3"), "{}", run.stderr);
    assert!(
        join(&dir, &site.ws.path("j"))
            .stderr
            .contains("volume 2 of 3")
    );
}

#[test]
fn a_duplicated_volume_is_named() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    std::fs::copy(&volumes(&dir)[2], dir.join("copy.airlock.003-of-003")).unwrap();
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_duplicate");
    assert!(
        run.stderr.contains("volume 3 of 3 appears twice"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_truncated_volume_is_named() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    let last = volumes(&dir)[2].clone();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_truncated");
    assert!(
        run.stderr.contains("volume 3 of 3 is truncated"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_corrupt_volume_is_named_by_join_and_by_verify() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    let second = volumes(&dir)[1].clone();
    flip_byte(&second, 200_000);
    let joined = join(&dir, &site.ws.path("j"));
    assert_eq!(joined.code, 1);
    assert!(
        joined.stderr.contains("volume 2 of 3 is corrupt"),
        "{}",
        joined.stderr
    );
    assert!(
        !site.ws.path("j").exists(),
        "nothing is written under the final name"
    );
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_corrupt");
    assert!(run.stderr.contains("volume 2 of 3"), "{}", run.stderr);
}

#[test]
fn a_volume_from_another_bundle_is_named() {
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    let (_, other) = split_bundle(&site, "b", "1.0.1");
    let stranger = volumes(&other)[1].clone();
    std::fs::remove_file(&volumes(&dir)[1]).unwrap();
    std::fs::copy(&stranger, dir.join(stranger.file_name().unwrap())).unwrap();
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_foreign");
    assert!(
        run.stderr.contains("belongs to another bundle"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_forged_volume_with_a_consistent_header_is_caught_by_the_signed_hashes() {
    use airlock_bundle::Sha256Digest;
    use airlock_bundle::volume::{HEADER_LEN, VolumeHeader};
    let site = Site::new();
    let (_, dir) = split_bundle(&site, "a", "1.0.0");
    let second = volumes(&dir)[1].clone();
    let mut bytes = std::fs::read(&second).unwrap();
    bytes[300_000] ^= 0xff;
    let mut header = VolumeHeader::decode(&bytes).unwrap();
    header.payload_sha256 = Sha256Digest::of(&bytes[HEADER_LEN as usize..]);
    bytes[..HEADER_LEN as usize].copy_from_slice(&header.encode());
    std::fs::write(&second, &bytes).unwrap();
    // The volume is self-consistent, so join cannot tell...
    join(&dir, &site.ws.path("j")).ok();
    // ...but the signed chunk hashes can, and the error names the volume.
    let run = verify(&site, &dir);
    assert_refused(&run, "volume_corrupt");
    // The 3 MiB bundle is one 64 MiB chunk over three volumes: the range is what can be
    // named when every header is self-consistent.
    assert!(
        run.stderr.contains("one of volumes 1 to 3 of 3") && run.stderr.contains("forged"),
        "{}",
        run.stderr
    );
    let listing = site.ls();
    let imported = site.import(&dir);
    site.assert_refused(&imported, "import", "volume_corrupt", &listing);
}
