//! Where the broker's Redis is: one fixed server (`broker.redis_url`), or the primary that Redis
//! Sentinel names (`broker.sentinel`), asked again on every (re)connect so that the node
//! follows failovers. Owns the clients the link connects with: one speaking RESP2 for commands,
//! one speaking RESP3 for pub/sub (see `inbox`).
//!
//! Sentinel discovery is a few commands rather than the redis crate's `sentinel` feature: each
//! question is bounded by `broker.timeout` (a sentinel that does not answer must not hold the
//! link), and the primary's client is built with the same TLS, CA file, password and database
//! as a fixed `redis_url`, only its address coming from the sentinels.

use redis::{Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::settings::BrokerSettings;

use super::BrokerError;

/// The clients of one Redis server: commands (RESP2) and pub/sub (RESP3).
pub(super) struct Clients {
    pub(super) commands: Client,
    pub(super) pubsub: Client,
}

pub(super) enum Target {
    Fixed(Clients),
    Sentinel {
        /// One client per sentinel, asked in order.
        sentinels: Vec<Client>,
        master_name: String,
        /// `redis_url` parsed: everything but the address applies to the primary.
        primary: ConnectionInfo,
    },
}

impl Target {
    pub(super) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel { .. })
    }

    pub(super) fn new(settings: &BrokerSettings) -> Result<Target, BrokerError> {
        let info = settings.redis_url.expose().into_connection_info()?;
        let sentinel = &settings.sentinel;
        if sentinel.master_name.is_empty() {
            return Ok(Target::Fixed(clients(info, settings)?));
        }
        let sentinels = (sentinel.urls.iter())
            .map(|url| Client::open(url.as_str()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target::Sentinel {
            sentinels,
            master_name: sentinel.master_name.clone(),
            primary: info,
        })
    }

    /// The clients of the server to use now: for Sentinel, the primary that the first
    /// sentinel able to answer names.
    pub(super) async fn resolve(&self, settings: &BrokerSettings) -> Result<Clients, BrokerError> {
        let (sentinels, master_name, primary) = match self {
            Target::Fixed(clients) => {
                return Ok(Clients {
                    commands: clients.commands.clone(),
                    pubsub: clients.pubsub.clone(),
                })
            }
            Target::Sentinel {
                sentinels,
                master_name,
                primary,
            } => (sentinels, master_name, primary),
        };
        let mut last = BrokerError::NoPrimary(master_name.clone());
        for sentinel in sentinels {
            match ask(sentinel, master_name, settings).await {
                Ok(Some((host, port))) => {
                    return clients(primary.clone().set_addr(at(primary.addr(), host, port)), settings)
                }
                Ok(None) => last = BrokerError::NoPrimary(master_name.clone()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the primary one sentinel knows, if any.
async fn ask(
    sentinel: &Client,
    master_name: &str,
    settings: &BrokerSettings,
) -> Result<Option<(String, u16)>, BrokerError> {
    let work = async {
        let mut conn = sentinel.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg("GET-MASTER-ADDR-BY-NAME").arg(master_name);
        let addr: Option<(String, u16)> = cmd.query_async(&mut conn).await?;
        Ok::<_, BrokerError>(addr)
    };
    match tokio::time::timeout(settings.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(BrokerError::Timeout(settings.timeout)),
    }
}

/// `addr` moved to `host:port`, keeping its TLS settings.
fn at(addr: &ConnectionAddr, host: String, port: u16) -> ConnectionAddr {
    match addr {
        ConnectionAddr::TcpTls {
            insecure, tls_params, ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    }
}

/// Both clients of the server `info` names, trusting `broker.redis_ca_file` when set.
fn clients(info: ConnectionInfo, settings: &BrokerSettings) -> Result<Clients, BrokerError> {
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    Ok(Clients {
        commands: open(info.clone(), settings)?,
        pubsub: open(info.set_redis_settings(resp3), settings)?,
    })
}

fn open(info: ConnectionInfo, settings: &BrokerSettings) -> Result<Client, BrokerError> {
    Ok(match &settings.redis_ca_file {
        Some(ca) => {
            let root_cert = std::fs::read(ca).map_err(|e| BrokerError::CaFile(ca.clone(), e))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            Client::build_with_tls(info, certs)?
        }
        None => Client::open(info)?,
    })
}
