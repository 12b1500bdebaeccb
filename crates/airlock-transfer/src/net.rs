//! Batched UDP I/O: generic segmentation offload on send, `recvmmsg` and GRO on receive.
//!
//! One system call moves up to 64 KiB of equal-size datagrams each way, which is what lets a
//! single core keep a 10 Gbit/s link busy with 1500-byte datagrams.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Socket buffers we ask for; the kernel may grant less (see `net.core.rmem_max`).
const SOCKET_BUFFER: usize = 32 << 20;
/// Largest datagram (or GRO batch of datagrams) one receive buffer holds.
const RECV_BUFFER: usize = 65_536;
/// Most bytes handed to the kernel in one GSO send.
const MAX_GSO_BYTES: usize = 65_000;

/// A UDP socket with the batching state of the platform.
pub struct Socket {
    socket: UdpSocket,
    state: UdpSocketState,
}

impl Socket {
    /// Binds to `addr` for receiving, with the largest receive buffer the kernel allows.
    pub fn bind(addr: SocketAddr) -> io::Result<Socket> {
        let socket = UdpSocket::bind(addr)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // A one-way receiver cannot slow the sender down: the buffer is what absorbs the
        // moments it is not scheduled. Forcing past net.core.rmem_max needs CAP_NET_ADMIN;
        // without it, take what rmem_max allows.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, SOCKET_BUFFER).is_err()
        {
            let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        }
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        Ok(Socket { socket, state })
    }

    /// An unbound-port socket of the right family for sending to `to`.
    pub fn for_sending_to(to: SocketAddr) -> io::Result<Socket> {
        let local: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        } else {
            "[::]:0".parse().map_err(io::Error::other)?
        };
        Socket::bind(local)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receive buffer granted by the kernel.
    pub fn recv_buffer_size(&self) -> usize {
        self.state
            .recv_buffer_size(UdpSockRef::from(&self.socket))
            .unwrap_or(0)
    }

    /// Waits until the socket is readable or `timeout` passes; true if readable.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        self.wait(PollFlags::IN, timeout)
    }

    fn wait(&self, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(&self.socket, flags)];
        let ts = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(rustix::io::Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `datagrams`, a run of equal `segment`-byte datagrams (the last may be shorter),
    /// in as few system calls as the platform allows. Blocks while the send buffer is full.
    pub fn send_all(&self, to: SocketAddr, datagrams: &[u8], segment: usize) -> io::Result<()> {
        let per_call = self
            .state
            .max_gso_segments()
            .clamp(1, (MAX_GSO_BYTES / segment).max(1));
        for chunk in datagrams.chunks(per_call * segment) {
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: chunk,
                segment_size: (chunk.len() > segment).then_some(segment),
                src_ip: None,
            };
            loop {
                match self
                    .state
                    .try_send(UdpSockRef::from(&self.socket), &transmit)
                {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait(PollFlags::OUT, Duration::from_millis(100))?;
                    }
                    // Nobody listening yet (ICMP port unreachable): a one-way link cannot
                    // know and must not care.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// Receive buffers for one batched read.
pub struct RecvBatch {
    buffers: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
    filled: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        let n = quinn_udp::BATCH_SIZE.max(1);
        RecvBatch {
            buffers: vec![vec![0; RECV_BUFFER]; n],
            meta: vec![RecvMeta::default(); n],
            filled: 0,
        }
    }
}

impl RecvBatch {
    /// Reads whatever is queued, without blocking; returns the number of datagrams read.
    pub fn recv(&mut self, socket: &Socket) -> io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = self
            .buffers
            .iter_mut()
            .map(|b| IoSliceMut::new(b.as_mut_slice()))
            .collect();
        match socket.state.recv(
            UdpSockRef::from(&socket.socket),
            &mut slices,
            &mut self.meta,
        ) {
            Ok(n) => self.filled = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.filled = 0,
            Err(e) => return Err(e),
        }
        Ok(self.datagrams().count())
    }

    /// The datagrams of the last read, GRO batches split at their stride, with their source.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> + '_ {
        self.meta[..self.filled]
            .iter()
            .zip(&self.buffers)
            .flat_map(|(meta, buffer)| {
                let stride = meta.stride.max(1);
                buffer[..meta.len]
                    .chunks(stride)
                    .map(move |d| (meta.addr, d))
            })
    }
}
