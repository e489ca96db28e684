//! The running mesh: brokers with their channels, the ingress route table, and one
//! delivery loop per trigger. `apply` moves it to a desired state by difference, so a
//! reload touches only what changed and a changed trigger keeps its cursor.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cemesh_channels::{
    Channel, DeadLetterStore, MemoryChannel, MemoryConfig, MemoryDeadLetters, SledConfig,
    SledStore, SledStoreOptions, Tapped,
};
use cemesh_dispatcher::{spawn_trigger, Deliverer, TriggerContext, TriggerHandle, TriggerKey};
use cemesh_ingress::{BrokerEndpoint, BrokerKey, Routes};
use tokio_util::sync::CancellationToken;

use crate::config::ChannelKind;
use crate::manifest::{BrokerDesired, Desired};

struct RunningBroker {
    desired: BrokerDesired,
    channel: Arc<Tapped>,
}

struct RunningTrigger {
    /// Its `TriggerRuntime` (`handle.trigger()`) defines the trigger's behaviour; a
    /// desired runtime that differs restarts the loop.
    handle: TriggerHandle,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MeshStatus {
    /// Every valid broker has its channel open and every valid trigger runs (and
    /// the process is not starting or draining). Invalid resources are listed in
    /// `problems` but do not make the process unready.
    pub ready: bool,
    pub brokers: Vec<String>,
    pub triggers: Vec<String>,
    pub problems: Vec<String>,
    /// A rejected reload of the config dir, if the last one was rejected.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_reload: Vec<String>,
    /// Why a valid broker (`ns/name`) is not running.
    #[serde(skip)]
    pub broker_failures: BTreeMap<String, String>,
    /// Why a valid trigger (`ns/name`) is not running.
    #[serde(skip)]
    pub trigger_failures: BTreeMap<String, String>,
}

/// sled's page cache. Events are read once per subscription, mostly right after they
/// were written, so a small cache costs little and keeps RSS bounded under a backlog.
const SLED_CACHE_BYTES: u64 = 64 << 20;

/// Opens channels for brokers. The sled database (one per process, under
/// `<data-dir>/sled`) opens with the first sled broker and stays open until shutdown.
pub struct Channels {
    #[cfg(feature = "kafka")]
    kafka: Option<cemesh_channels::kafka::KafkaStore>,
    data_dir: PathBuf,
    sled: Option<SledStore>,
    sled_dead_letters: Option<Arc<dyn DeadLetterStore>>,
    memory_dead_letters: Arc<dyn DeadLetterStore>,
}

impl Channels {
    pub fn new(data_dir: PathBuf) -> Self {
        Channels {
            #[cfg(feature = "kafka")]
            kafka: None,
            data_dir,
            sled: None,
            sled_dead_letters: None,
            memory_dead_letters: Arc::new(MemoryDeadLetters::default()),
        }
    }

    fn sled(&mut self) -> Result<&SledStore, String> {
        if self.sled.is_none() {
            let path = self.data_dir.join("sled");
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("cannot create data directory {}: {e}", path.display()))?;
            let options = SledStoreOptions {
                cache_capacity_bytes: SLED_CACHE_BYTES,
            };
            self.sled = Some(SledStore::open_with(&path, options).map_err(|e| e.to_string())?);
        }
        Ok(self.sled.as_ref().expect("opened above"))
    }

    /// Kafka channels connect through this store (`--kafka-bootstrap`).
    #[cfg(feature = "kafka")]
    pub fn set_kafka(&mut self, store: cemesh_channels::kafka::KafkaStore) {
        self.kafka = Some(store);
    }

    #[cfg(feature = "kafka")]
    async fn open_kafka(
        &self,
        key: &BrokerKey,
        d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, String> {
        let Some(store) = &self.kafka else {
            return Err(format!(
                "broker {key}: the kafka channel needs --kafka-bootstrap (or kafka.bootstrap in the config file)"
            ));
        };
        let config = crate::kafka::channel_config(&d.annotations)
            .map_err(|(path, msg)| format!("broker {key}: {path}: {msg}"))?;
        let channel = store
            .channel(&key.namespace, &key.name, config)
            .await
            .map_err(|e| format!("broker {key}: {e}"))?;
        Ok(Arc::new(channel))
    }

    #[cfg(not(feature = "kafka"))]
    async fn open_kafka(
        &self,
        key: &BrokerKey,
        _d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, String> {
        Err(format!(
            "broker {key}: the kafka channel is not available in this build (build with --features kafka)"
        ))
    }

    async fn open(
        &mut self,
        key: &BrokerKey,
        d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, String> {
        let o = &d.channel_options;
        match d.channel {
            ChannelKind::Memory => Ok(Arc::new(MemoryChannel::new(MemoryConfig {
                max_records: usize::try_from(o.max_backlog_records).unwrap_or(usize::MAX),
                retain_without_subscribers: usize::try_from(o.retain_without_triggers)
                    .unwrap_or(usize::MAX),
            }))),
            ChannelKind::Sled => {
                let config = SledConfig {
                    durability: o.durability,
                    retention: o.retention,
                    retain_without_subscribers: o.retain_without_triggers,
                    max_backlog_records: o.max_backlog_records,
                    max_backlog_bytes: o.max_backlog_bytes,
                };
                let channel = self
                    .sled()?
                    .channel(&sled_id(key), config)
                    .map_err(|e| format!("broker {key}: {e}"))?;
                Ok(Arc::new(channel))
            }
            ChannelKind::Kafka => self.open_kafka(key, d).await,
        }
    }

    /// Where a trigger on a broker of this kind keeps its dead letters: durable in
    /// the sled database for sled brokers, in memory otherwise (like their events).
    fn dead_letters(&mut self, kind: ChannelKind) -> Result<Arc<dyn DeadLetterStore>, String> {
        #[cfg(feature = "kafka")]
        if kind == ChannelKind::Kafka {
            if let Some(store) = &self.kafka {
                return Ok(store.dead_letters());
            }
        }
        if kind != ChannelKind::Sled {
            return Ok(self.memory_dead_letters.clone());
        }
        if let Some(d) = &self.sled_dead_letters {
            return Ok(d.clone());
        }
        let store: Arc<dyn DeadLetterStore> =
            Arc::new(self.sled()?.dead_letters().map_err(|e| e.to_string())?);
        self.sled_dead_letters = Some(store.clone());
        Ok(store)
    }

    /// Forgets a removed broker's stored events.
    fn remove(&mut self, key: &BrokerKey, kind: ChannelKind) {
        if kind != ChannelKind::Sled {
            return;
        }
        if let Some(store) = &self.sled {
            if let Err(e) = store.remove_channel(&sled_id(key)) {
                tracing::warn!(broker = %key, error = %e, "Could not remove the broker's stored events");
            }
        }
    }

    /// Persists cursors and flushes; the database closes when the last handle goes.
    async fn close(&mut self) {
        self.sled_dead_letters = None;
        if let Some(store) = self.sled.take() {
            if let Err(e) = store.close().await {
                tracing::error!(error = %e, "Closing the sled store failed");
            }
        }
    }
}

fn sled_id(key: &BrokerKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

pub struct Mesh {
    routes: Routes,
    deliverer: Deliverer,
    channels: Channels,
    brokers: BTreeMap<BrokerKey, RunningBroker>,
    triggers: BTreeMap<TriggerKey, RunningTrigger>,
    status: Arc<Mutex<MeshStatus>>,
    registry: Registry,
    taps: Taps,
    /// Cancelled at shutdown: ends background work such as redrives.
    background: CancellationToken,
}

/// Every running broker's channel, tapped for `cemesh tail`.
pub type Taps = Arc<RwLock<BTreeMap<BrokerKey, Arc<Tapped>>>>;

/// The running triggers' pipelines, for the admin API (dead letters, redrive).
pub type Registry = Arc<RwLock<BTreeMap<TriggerKey, Arc<TriggerContext>>>>;

impl Mesh {
    pub fn new(routes: Routes, channels: Channels) -> Self {
        Mesh {
            routes,
            deliverer: Deliverer::new(),
            channels,
            brokers: BTreeMap::new(),
            triggers: BTreeMap::new(),
            status: Arc::default(),
            registry: Arc::default(),
            taps: Arc::default(),
            background: CancellationToken::new(),
        }
    }

    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    pub fn taps(&self) -> Taps {
        self.taps.clone()
    }

    /// Cancelled when the mesh shuts down.
    pub fn background(&self) -> CancellationToken {
        self.background.clone()
    }

    pub fn status(&self) -> Arc<Mutex<MeshStatus>> {
        self.status.clone()
    }

    /// Moves the mesh to `desired`, changing only what differs.
    pub async fn apply(&mut self, desired: Desired) {
        let mut problems: Vec<String> = desired.problems.iter().map(ToString::to_string).collect();
        let mut broker_failures = BTreeMap::new();
        let mut trigger_failures = BTreeMap::new();

        // Triggers that go away or change stop first, so nothing reads a channel that
        // is about to close.
        let mut keep = BTreeMap::new();
        for (key, running) in std::mem::take(&mut self.triggers) {
            let wanted = desired.triggers.get(&key).map(|t| &t.runtime);
            let broker_key = BrokerKey::new(&key.namespace, broker_of(&running));
            // A broker that goes or changes its channel kind takes its triggers along.
            let broker_gone = match (
                desired.brokers.get(&broker_key),
                self.brokers.get(&broker_key),
            ) {
                (Some(d), Some(b)) => d.channel != b.desired.channel,
                (Some(_), None) => false,
                (None, _) => true,
            };
            if wanted == Some(running.handle.trigger()) && !broker_gone {
                keep.insert(key, running);
                continue;
            }
            running.handle.stop().await;
            self.registry
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            if wanted.is_none() {
                if let Some(b) = self.brokers.get(&broker_key) {
                    let _ = b.channel.unsubscribe(&key.subscription_name()).await;
                }
                tracing::info!(trigger = %key, "Trigger removed");
            }
        }
        self.triggers = keep;

        let gone: Vec<BrokerKey> = self
            .brokers
            .keys()
            .filter(|k| !desired.brokers.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(b) = self.brokers.remove(&key) {
                self.channels.remove(&key, b.desired.channel);
                tracing::info!(broker = %key, "Broker removed");
            }
        }
        for (key, d) in &desired.brokers {
            let reuse = self
                .brokers
                .get(key)
                .is_some_and(|b| b.desired.channel == d.channel);
            if reuse {
                let Some(b) = self.brokers.get_mut(key) else {
                    continue;
                };
                if b.desired.channel_options != d.channel_options {
                    if d.channel == ChannelKind::Sled {
                        // The same channel with new settings: subscriptions carry on.
                        if let Err(e) = self.channels.open(key, d).await {
                            broker_failures.insert(key.to_string(), e.clone());
                            problems.push(e);
                        }
                    } else {
                        tracing::warn!(broker = %key, "Changed channel settings of a memory broker apply after a restart");
                    }
                }
                b.desired = d.clone();
                continue;
            }
            match self.channels.open(key, d).await {
                Ok(channel) => {
                    let channel = Arc::new(Tapped::new(channel));
                    tracing::info!(broker = %key, channel = d.channel.as_str(), "Broker ready");
                    self.brokers.insert(
                        key.clone(),
                        RunningBroker {
                            desired: d.clone(),
                            channel,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(broker = %key, error = %e, "Broker not started");
                    broker_failures.insert(key.to_string(), e.clone());
                    problems.push(e);
                }
            }
        }
        let table = self
            .brokers
            .iter()
            .map(|(k, b)| {
                let endpoint = BrokerEndpoint {
                    key: k.clone(),
                    channel: b.channel.clone() as Arc<dyn Channel>,
                    max_body_bytes: usize::try_from(b.desired.max_body_bytes).unwrap_or(usize::MAX),
                };
                (k.clone(), Arc::new(endpoint))
            })
            .collect();
        self.routes.replace(table);

        for (key, t) in desired.triggers {
            if self.triggers.contains_key(&key) {
                continue;
            }
            let broker_key = BrokerKey::new(&key.namespace, &t.runtime.broker);
            let Some(broker) = self.brokers.get(&broker_key) else {
                let why = format!("broker {broker_key} is not running");
                problems.push(format!("trigger {key}: {why}"));
                trigger_failures.insert(key.to_string(), why);
                continue;
            };
            match broker
                .channel
                .subscribe(&key.subscription_name(), t.start)
                .await
            {
                Ok(sub) => {
                    let dead_letters = match self.channels.dead_letters(broker.desired.channel) {
                        Ok(d) => d,
                        Err(e) => {
                            tracing::error!(trigger = %key, error = %e, "Trigger not started");
                            problems.push(format!("trigger {key}: {e}"));
                            trigger_failures.insert(key.to_string(), e);
                            continue;
                        }
                    };
                    let context = Arc::new(TriggerContext {
                        runtime: Arc::new(t.runtime),
                        deliverer: self.deliverer.clone(),
                        broker: broker.channel.clone(),
                        dead_letters,
                        stats: Arc::default(),
                        metrics: Arc::default(),
                    });
                    self.registry
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone(), context.clone());
                    let handle = spawn_trigger(context, sub);
                    self.triggers.insert(key, RunningTrigger { handle });
                }
                Err(e) => {
                    tracing::error!(trigger = %key, error = %e, "Trigger not started");
                    problems.push(format!("trigger {key}: {e}"));
                    trigger_failures.insert(key.to_string(), e.to_string());
                }
            }
        }

        {
            let mut taps = self.taps.write().unwrap_or_else(|p| p.into_inner());
            *taps = self
                .brokers
                .iter()
                .map(|(k, b)| (k.clone(), b.channel.clone()))
                .collect();
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *status = MeshStatus {
            ready: broker_failures.is_empty() && trigger_failures.is_empty(),
            brokers: self.brokers.keys().map(ToString::to_string).collect(),
            triggers: self.triggers.keys().map(ToString::to_string).collect(),
            problems,
            rejected_reload: Vec::new(),
            broker_failures,
            trigger_failures,
        };
    }

    /// Stops every trigger (in-flight deliveries finish) and drops the channels.
    /// Attempts in flight get up to `grace` to finish; whatever is not finished by
    /// then stays unacked and is delivered again after a restart.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.background.cancel();
        let stops = std::mem::take(&mut self.triggers)
            .into_values()
            .map(|t| t.handle.stop());
        if tokio::time::timeout(grace, futures::future::join_all(stops))
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "Deliveries still in flight after the grace period; they will be redelivered"
            );
        }
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.routes.replace(Default::default());
        self.brokers.clear();
        self.taps.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.channels.close().await;
    }
}

fn broker_of(t: &RunningTrigger) -> &str {
    &t.handle.trigger().broker
}
