//! The physical ceiling for `bench/kmip.sh`: a bare rustls server on the key server's TLS
//! setup (same certificates, same `tls::server_config`, client certificates required) that
//! answers every framed request with the same bytes — a Get response captured from a real
//! server — without decoding, looking up or encoding anything. The load generator's Get
//! throughput against it is what TLS, framing and the loopback allow on this machine.
//!
//! `tls_echo --certs DIR --capture ADDR [--listen ADDR]`: DIR is a development directory
//! (server.pem, server-key.pem, ca.pem and the client files); ADDR a running server to
//! capture the Get response from. Prints `kmip listening on ADDR` and serves until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use shadowkeep_api::server_config::TlsFiles;
use shadowkeep_server::client::{KmipClient, batch_items, create_aes, payload, request, uids};
use shadowkeep_server::https::{self, ClientFiles};
use shadowkeep_server::kmip::enums::operation;
use shadowkeep_server::kmip::tag;
use shadowkeep_server::tls::{ClientAuth, server_config};
use shadowkeep_server::ttlv::{self, Item};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

struct Args {
    certs: PathBuf,
    capture: SocketAddr,
    listen: SocketAddr,
}

fn parse() -> Result<Args, String> {
    let mut certs = None;
    let mut capture = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--certs" => certs = Some(PathBuf::from(value)),
            "--capture" => capture = Some(value.parse().map_err(|e| format!("--capture: {e}"))?),
            "--listen" => listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        certs: certs.ok_or("--certs is required")?,
        capture: capture.ok_or("--capture is required")?,
        listen,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls_echo: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tls_echo: failed to start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tls_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A real server's answer to a Get, as bytes.
async fn capture(args: &Args) -> Result<Vec<u8>, String> {
    let connector = https::connector(&ClientFiles::dev(&args.certs)).map_err(|e| e.to_string())?;
    let mut c = KmipClient::connect(args.capture, &connector)
        .await
        .map_err(|e| e.to_string())?;
    let created = c
        .call(&request(
            (1, 2),
            vec![(operation::CREATE, create_aes(256, vec![]))],
        ))
        .await
        .map_err(|e| e.to_string())?;
    let uid = batch_items(&created)
        .first()
        .and_then(|i| payload(i))
        .and_then(|p| uids(p).pop())
        .ok_or("the capture server did not create a key")?;
    let got = c
        .call(&request(
            (1, 2),
            vec![(
                operation::GET,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)],
            )],
        ))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ttlv::encode(&got))
}

async fn run(args: &Args) -> Result<(), String> {
    let answer: Arc<[u8]> = capture(args).await?.into();
    let tls = server_config(
        &TlsFiles {
            cert: args.certs.join("server.pem"),
            key: args.certs.join("server-key.pem"),
            client_ca: args.certs.join("ca.pem"),
        },
        ClientAuth::Required,
    )
    .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "kmip listening on {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    loop {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, answer) = (acceptor.clone(), Arc::clone(&answer));
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut header = [0u8; ttlv::HEADER_LEN];
            let mut body = Vec::new();
            while tls.read_exact(&mut header).await.is_ok() {
                let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                body.resize(len as usize, 0);
                if tls.read_exact(&mut body).await.is_err()
                    || tls.write_all(&answer).await.is_err()
                    || tls.flush().await.is_err()
                {
                    return;
                }
            }
        });
    }
}
