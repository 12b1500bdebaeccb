//! A genuine bundle crosses loopback whole, and a forged announce of it is refused end to end
//! with one line naming the disagreement and nothing left on disk.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: a failed unwrap is a failed test"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use airlock_bundle::{Limits, NoProgress};
use airlock_transfer::Error;
use airlock_transfer::announce::{Geometry, MIN_BLOCK_SIZE};
use airlock_transfer::net::Socket;
use airlock_transfer::receiver::{self, ReceiveOptions, STATE_DIR};
use airlock_transfer::sender::{self, SendOptions};

use common::{announce_datagrams, files_under, genuine_bundle};

/// A receiver on loopback, running on its own thread until it returns.
fn spawn_receiver(
    options: ReceiveOptions,
) -> (
    SocketAddr,
    std::thread::JoinHandle<airlock_transfer::Result<receiver::ReceiveReport>>,
) {
    let socket = Socket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    let handle = std::thread::spawn(move || receiver::receive(&socket, &options, &NoProgress));
    (addr, handle)
}

#[test]
fn a_genuine_bundle_arrives_byte_identical_in_small_and_default_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 3 << 20);
    for block_size in [MIN_BLOCK_SIZE, 1 << 20] {
        let out = dir.path().join(format!("out-{block_size}"));
        let mut options = ReceiveOptions::new(out.clone());
        options.idle_timeout = Duration::from_secs(10);
        let (addr, receiving) = spawn_receiver(options);
        let mut send = SendOptions::new(addr);
        send.block_size = block_size;
        send.rate = Some(300_000_000);
        send.passes = Some(3);
        sender::send(&bundle.path, &send, &Limits::default(), &NoProgress).unwrap();
        let report = receiving.join().unwrap().unwrap();
        assert_eq!(report.status, "received");
        assert_eq!(report.size, bundle.size);
        assert_eq!(report.blocks, bundle.size.div_ceil(u64::from(block_size)));
        assert_eq!(
            std::fs::read(out.join("tiny_1.0.0.airlock")).unwrap(),
            std::fs::read(&bundle.path).unwrap()
        );
    }
}

#[test]
fn a_forged_announce_is_refused_end_to_end_naming_the_disagreement_and_writing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 100_000);
    let out = dir.path().join("out");
    let mut options = ReceiveOptions::new(out.clone());
    options.idle_timeout = Duration::from_millis(1500);
    let (addr, receiving) = spawn_receiver(options);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let session = 0xF0F0_F0F0_0000_0002;
    let forged = bundle.announce(
        session,
        Geometry {
            size: 1 << 38,
            block_size: MIN_BLOCK_SIZE,
            symbol_size: 1440,
        },
    );
    for d in announce_datagrams(&forged) {
        socket.send_to(&d, addr).unwrap();
    }
    let Err(Error::Incomplete(why)) = receiving.join().unwrap() else {
        panic!("the forged session was not refused");
    };
    assert_eq!(
        why,
        format!(
            "every session was refused; last: {session:016x}: announce says {} bytes in {} blocks of {MIN_BLOCK_SIZE}; the signed manifest makes the bundle {} bytes",
            1u64 << 38,
            (1u64 << 38) / u64::from(MIN_BLOCK_SIZE),
            bundle.size
        )
    );
    assert_eq!(
        files_under(&out.join(STATE_DIR)),
        Vec::<std::path::PathBuf>::new()
    );
}

#[test]
fn a_bundle_file_whose_size_is_not_the_signed_one_is_refused_by_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = genuine_bundle(dir.path(), 100_000);
    // One more zero block after the end of the archive: still a readable tar, but not the
    // bundle airlock wrote, and no receiver would take it.
    let padded = dir.path().join("padded.airlock");
    let mut bytes = std::fs::read(&bundle.path).unwrap();
    bytes.extend_from_slice(&[0; 512]);
    std::fs::write(&padded, bytes).unwrap();
    match sender::bundle_identity(&padded, &Limits::default()) {
        Err(Error::BundleSizeMismatch { actual, signed, .. }) => {
            assert_eq!(actual, bundle.size + 512);
            assert_eq!(signed, bundle.size);
        }
        other => panic!("{:?}", other.map(|(_, d, s)| (d, s))),
    }
}
