//! Connections shared by a role: the control plane (catalog, work queue) and the JetStream tiers.

use std::collections::BTreeMap;

use async_nats::jetstream;
use cim_policies::{Config, Tier};

use crate::catalog::Catalog;
use crate::error::Error;
use crate::jetstream::{connect, JetStreamTier};
use crate::retry::{retry, Backoff};
use crate::work::WorkQueue;

/// Everything a role needs to talk to the rest of the system, built from the configuration.
pub struct System {
    /// The validated configuration.
    pub config: Config,
    /// The catalog on the control plane.
    pub catalog: Catalog,
    /// The work queue on the control plane.
    pub work: WorkQueue,
    control: jetstream::Context,
    tiers: BTreeMap<String, JetStreamTier>,
    /// Every NATS connection held, named for readiness reasons.
    nats: Vec<(String, async_nats::Client)>,
}

impl System {
    /// Connects to `[nats]` and to every JetStream tier (one connection per distinct URL),
    /// and opens (creating if needed) the catalog and the work-queue stream.
    /// `client_name` identifies the role in `/connz`.
    pub async fn connect(config: Config, client_name: &str) -> Result<Self, Error> {
        let control = connect(
            &config.nats.url,
            config.nats.credentials_file.as_deref(),
            client_name,
        )
        .await?;
        let control_js = jetstream::new(control.clone());
        // Roles start together and race to create these; the cluster may still be electing.
        let catalog = retry("open catalog", Backoff::STARTUP, || {
            Catalog::open(&control_js, &config.catalog.bucket, config.nats.replicas)
        })
        .await?;
        let work = retry("open work queue", Backoff::STARTUP, || {
            WorkQueue::open(control_js.clone(), &config.work, config.nats.replicas)
        })
        .await?;

        let mut nats = vec![("control plane".to_string(), control.clone())];
        let mut clients: BTreeMap<String, async_nats::Client> = BTreeMap::new();
        clients.insert(config.nats.url.clone(), control);
        let mut tiers = BTreeMap::new();
        for (name, tier) in &config.tiers {
            let Tier::JetStream(js) = tier else { continue };
            let url = js.url.clone().unwrap_or_else(|| config.nats.url.clone());
            let client = match clients.get(&url) {
                Some(client) => client.clone(),
                None => {
                    let credentials = js
                        .credentials_file
                        .as_deref()
                        .or(config.nats.credentials_file.as_deref());
                    let client = connect(&url, credentials, client_name).await?;
                    clients.insert(url, client.clone());
                    client
                }
            };
            nats.push((format!("tier {name}"), client.clone()));
            tiers.insert(
                name.clone(),
                JetStreamTier::new(name, &js.domain, js.replicas, client),
            );
        }
        Ok(Self {
            config,
            catalog,
            work,
            control: control_js,
            tiers,
            nats,
        })
    }

    /// JetStream on the control plane (`[nats]`), where the catalog, the work queue and the
    /// leases live.
    pub fn control(&self) -> &jetstream::Context {
        &self.control
    }

    /// A readiness check that passes while every NATS connection of this role is up.
    pub fn nats_ready(&self) -> crate::http::Check {
        crate::http::nats_connected(self.nats.clone())
    }

    /// The JetStream tier named `name`.
    pub fn jetstream_tier(&self, name: &str) -> Result<&JetStreamTier, Error> {
        self.tiers.get(name).ok_or_else(|| {
            Error::Config(format!(
                "no jetstream tier named {name:?} (jetstream tiers: {})",
                self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}
