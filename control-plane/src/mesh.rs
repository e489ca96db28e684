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
use cemesh_dispatcher::{
    spawn_trigger, Breaker, Deliverer, Filter, Format, ReplyTo, TriggerContext, TriggerHandle,
    TriggerKey, TriggerRuntime,
};
use cemesh_ingress::auth::{Access, DefaultMode, Policy};
use cemesh_ingress::{BinaryDelivery, BrokerEndpoint, BrokerKey, Routes};
use cemesh_proto::Event;
use tokio_util::sync::CancellationToken;

use crate::config::ChannelKind;
use crate::manifest::sources::{ping_channel, SourceDesired};
use crate::manifest::{AddressKind, BrokerDesired, Desired, TriggerDesired};
use crate::point::LogError;
use cemesh_channels::journal::{Journal, JournalStore};
use cemesh_sources::{spawn_ping, spawn_process, PingHandle, ProcessHandle};

struct RunningBroker {
    desired: BrokerDesired,
    channel: Arc<Tapped>,
    /// The event types it has accepted (kept across restarts).
    event_types: Arc<cemesh_ingress::seen::EventTypes>,
    /// Its dedup window (kept across restarts), when it has one.
    dedup: Option<Arc<cemesh_ingress::dedup::Dedup>>,
}

/// A source's ticker or process.
struct RunningSource {
    desired: SourceDesired,
    handle: SourceHandle,
}

enum SourceHandle {
    /// With the channel it appends to: a reopened channel restarts it.
    Ping(PingHandle, Arc<Tapped>),
    Process(ProcessHandle),
    /// A SinkBinding: stopping it unbinds the service.
    Binding(Arc<dyn crate::ondemand::Bindable>),
}

impl SourceHandle {
    async fn stop(self) {
        match self {
            SourceHandle::Ping(h, _) => h.stop().await,
            SourceHandle::Process(h) => h.stop().await,
            SourceHandle::Binding(target) => target.bind(Vec::new()),
        }
    }
}

struct RunningTrigger {
    /// Its `TriggerRuntime` (`handle.trigger()`) defines the trigger's behaviour; a
    /// desired runtime that differs restarts the loop.
    handle: TriggerHandle,
}

/// The `/readyz` problem of a process that runs no broker.
pub const NO_BROKER: &str =
    "no broker is running: define one in the config dir or apply one through the admin API";

/// What `/readyz` reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MeshStatus {
    /// At least one broker runs, every valid broker has its channel open and every
    /// valid trigger runs (and the process is not starting or draining). Invalid
    /// resources are listed in `problems` but do not make the process unready.
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

/// sled's page cache by default. Events are read once per subscription, mostly right
/// after they were written, so a small cache costs little and keeps RSS bounded
/// under a backlog.
pub const DEFAULT_SLED_CACHE_BYTES: u64 = 64 << 20;

/// Why a broker's channel (or the store behind it) did not open; shown in the log,
/// `/readyz` and the broker's status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Sled(cemesh_channels::ChannelError),
    #[error("broker {broker}: {source}")]
    Channel {
        broker: BrokerKey,
        source: cemesh_channels::ChannelError,
    },
    #[error("broker {0}: the kafka channel needs --kafka-bootstrap (or kafka.bootstrap in the config file)")]
    NoKafka(BrokerKey),
    #[error("broker {broker}: {message}")]
    KafkaConfig { broker: BrokerKey, message: String },
    #[error("broker {0}: the kafka channel is not available in this build (build with --features kafka)")]
    KafkaNotBuilt(BrokerKey),
}

/// Opens channels for brokers. The sled database (one per process, under
/// `<data-dir>/sled`) opens with the first sled broker and stays open until shutdown.
pub struct Channels {
    #[cfg(feature = "kafka")]
    kafka: Option<cemesh_channels::kafka::KafkaStore>,
    /// Connections to the clusters KafkaSources read, by `bootstrap.servers`.
    #[cfg(feature = "kafka")]
    source_clusters: BTreeMap<String, cemesh_channels::kafka::KafkaStore>,
    data_dir: PathBuf,
    sled: Option<SledStore>,
    sled_dead_letters: Option<Arc<dyn DeadLetterStore>>,
    memory_dead_letters: Arc<dyn DeadLetterStore>,
    min_free_disk: u64,
    sled_cache: u64,
    sled_commit_delay: std::time::Duration,
}

impl Channels {
    pub fn new(data_dir: PathBuf) -> Self {
        Channels {
            #[cfg(feature = "kafka")]
            kafka: None,
            #[cfg(feature = "kafka")]
            source_clusters: BTreeMap::new(),
            data_dir,
            sled: None,
            sled_dead_letters: None,
            memory_dead_letters: Arc::new(MemoryDeadLetters::default()),
            min_free_disk: cemesh_channels::sled::DEFAULT_MIN_FREE_BYTES,
            sled_cache: DEFAULT_SLED_CACHE_BYTES,
            sled_commit_delay: cemesh_channels::sled::DEFAULT_COMMIT_DELAY,
        }
    }

    /// sled's page cache (`--sled-cache-size`).
    pub fn with_sled_cache(mut self, bytes: u64) -> Self {
        self.sled_cache = bytes;
        self
    }

    /// How long a sled group commit may wait for its producers (`--sled-commit-delay`).
    pub fn with_sled_commit_delay(mut self, delay: std::time::Duration) -> Self {
        self.sled_commit_delay = delay;
        self
    }

    /// The disk reserve under which the sled store refuses writes (`--min-free-disk`).
    pub fn with_min_free_disk(mut self, bytes: u64) -> Self {
        self.min_free_disk = bytes;
        self
    }

    fn sled(&mut self) -> Result<&SledStore, OpenError> {
        if self.sled.is_none() {
            let path = self.data_dir.join("sled");
            std::fs::create_dir_all(&path).map_err(|source| OpenError::DataDir {
                path: path.clone(),
                source,
            })?;
            let options = SledStoreOptions {
                cache_capacity_bytes: self.sled_cache,
                min_free_bytes: self.min_free_disk,
                commit_delay: self.sled_commit_delay,
            };
            self.sled = Some(SledStore::open_with(&path, options).map_err(OpenError::Sled)?);
        }
        Ok(self.sled.as_ref().expect("opened above"))
    }

    /// Kafka channels connect through this store (`--kafka-bootstrap`).
    #[cfg(feature = "kafka")]
    pub fn set_kafka(&mut self, store: cemesh_channels::kafka::KafkaStore) {
        self.kafka = Some(store);
    }

    /// The connection to the cluster a KafkaSource reads: the server's own when it
    /// is the same cluster, else one made with the server's Kafka settings (the
    /// same security properties) and the source's servers, kept for later.
    #[cfg(feature = "kafka")]
    async fn source_cluster(
        &mut self,
        key: &BrokerKey,
        bootstrap: &str,
    ) -> Result<cemesh_channels::kafka::KafkaStore, OpenError> {
        let servers = |b: &str| {
            let mut s: Vec<String> = b.split(',').map(|s| s.trim().to_owned()).collect();
            s.sort();
            s
        };
        if let Some(store) = &self.kafka {
            if servers(&store.options().bootstrap) == servers(bootstrap) {
                return Ok(store.clone());
            }
        }
        if let Some(store) = self.source_clusters.get(bootstrap) {
            return Ok(store.clone());
        }
        let options = cemesh_channels::kafka::KafkaOptions {
            bootstrap: bootstrap.to_owned(),
            ..self
                .kafka
                .as_ref()
                .map(|k| k.options().clone())
                .unwrap_or_default()
        };
        let store = cemesh_channels::kafka::KafkaStore::connect(options)
            .await
            .map_err(|source| OpenError::Channel {
                broker: key.clone(),
                source,
            })?;
        self.source_clusters
            .insert(bootstrap.to_owned(), store.clone());
        Ok(store)
    }

    #[cfg(feature = "kafka")]
    async fn open_kafka(
        &mut self,
        key: &BrokerKey,
        d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, OpenError> {
        let mut config = crate::kafka::channel_config(&d.annotations).map_err(|(path, msg)| {
            OpenError::KafkaConfig {
                broker: key.clone(),
                message: format!("{path}: {msg}"),
            }
        })?;
        let store = match &d.source_topic {
            Some(t) => {
                config.topic = Some(t.topic.clone());
                config.foreign = Some(cemesh_channels::kafka::ForeignTopic {
                    group: t.group.clone(),
                    source: t.source.clone(),
                    key_type: cemesh_channels::kafka::KeyType::parse(&t.key_type)
                        .unwrap_or_default(),
                    overrides: t.overrides.clone(),
                });
                &self.source_cluster(key, &t.bootstrap).await?
            }
            None => match &self.kafka {
                Some(store) => store,
                None => return Err(OpenError::NoKafka(key.clone())),
            },
        };
        let channel = store
            .channel(&key.namespace, &key.name, config)
            .await
            .map_err(|source| OpenError::Channel {
                broker: key.clone(),
                source,
            })?;
        Ok(Arc::new(channel))
    }

    #[cfg(not(feature = "kafka"))]
    async fn open_kafka(
        &mut self,
        key: &BrokerKey,
        _d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, OpenError> {
        Err(OpenError::KafkaNotBuilt(key.clone()))
    }

    async fn open(
        &mut self,
        key: &BrokerKey,
        d: &BrokerDesired,
    ) -> Result<Arc<dyn Channel>, OpenError> {
        let o = &d.channel_options;
        match d.channel {
            ChannelKind::Memory => Ok(Arc::new(MemoryChannel::new(MemoryConfig {
                max_records: usize::try_from(o.max_backlog_records).unwrap_or(usize::MAX),
                max_bytes: o.max_backlog_bytes,
                retain_without_subscribers: usize::try_from(o.retain_without_triggers)
                    .unwrap_or(usize::MAX),
                backpressure_window: o.backpressure_window,
                backpressure_hold: o.backpressure_hold,
            }))),
            ChannelKind::Sled => {
                let config = SledConfig {
                    durability: o.durability,
                    retention: o.retention,
                    retention_bytes: o.retention_bytes,
                    retain_without_subscribers: o.retain_without_triggers,
                    max_backlog_records: o.max_backlog_records,
                    max_backlog_bytes: o.max_backlog_bytes,
                    backpressure_window: o.backpressure_window,
                    backpressure_hold: o.backpressure_hold,
                };
                let channel = self
                    .sled()?
                    .channel(&sled_id(key), config)
                    .map_err(|source| OpenError::Channel {
                        broker: key.clone(),
                        source,
                    })?;
                Ok(Arc::new(channel))
            }
            ChannelKind::Kafka => self.open_kafka(key, d).await,
        }
    }

    /// Where a trigger on a broker of this kind keeps its dead letters: in Kafka for
    /// Kafka brokers, durable in the sled database for sled brokers (and for
    /// KafkaSources when the server has no Kafka of its own), in memory for memory
    /// brokers (like their events).
    fn dead_letters(&mut self, kind: ChannelKind) -> Result<Arc<dyn DeadLetterStore>, OpenError> {
        #[cfg(feature = "kafka")]
        if kind == ChannelKind::Kafka {
            if let Some(store) = &self.kafka {
                return Ok(store.dead_letters());
            }
        }
        if kind == ChannelKind::Memory {
            return Ok(self.memory_dead_letters.clone());
        }
        if let Some(d) = &self.sled_dead_letters {
            return Ok(d.clone());
        }
        let store: Arc<dyn DeadLetterStore> =
            Arc::new(self.sled()?.dead_letters().map_err(OpenError::Sled)?);
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
    sources: BTreeMap<String, RunningSource>,
    status: Arc<Mutex<MeshStatus>>,
    registry: Registry,
    taps: Taps,
    /// Cancelled at shutdown: ends background work such as redrives.
    background: CancellationToken,
    /// The `EventPolicy`s selecting each broker; a change reaches the ingress with
    /// the next route table, without restarting anything.
    policies: BTreeMap<BrokerKey, Vec<Arc<Policy>>>,
    /// What a broker no policy selects accepts (`auth.default_authorization`).
    default_access: DefaultMode,
    journal: Option<Arc<JournalStore>>,
}

/// A broker's triggers as the ingress sees them: an event may be delivered in binary
/// mode if the broker has no trigger yet (one added later may well be binary) or a
/// binary-mode trigger's filter matches it.
#[derive(Debug)]
struct BinaryTriggers {
    any: bool,
    filters: Vec<Filter>,
}

impl BinaryDelivery for BinaryTriggers {
    fn needs_binary(&self, event: &Event) -> bool {
        !self.any || self.filters.iter().any(|f| f.matches(event))
    }
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
            sources: BTreeMap::new(),
            status: Arc::default(),
            registry: Arc::default(),
            taps: Arc::default(),
            background: CancellationToken::new(),
            policies: BTreeMap::new(),
            default_access: DefaultMode::default(),
            journal: None,
        }
    }

    /// Journals what the brokers accept and deliver (unless one says
    /// `cemesh.dev/journal: off`).
    pub fn with_journal(mut self, journal: Arc<JournalStore>) -> Self {
        self.journal = Some(journal);
        self
    }

    fn journal_of(&self, broker: &BrokerDesired) -> Option<Arc<dyn Journal>> {
        match &self.journal {
            Some(j) if broker.journal => Some(j.clone() as Arc<dyn Journal>),
            _ => None,
        }
    }

    /// Deliveries to a destination with an audience carry a JWT from `tokens`.
    pub fn with_tokens(mut self, tokens: Arc<dyn cemesh_dispatcher::TokenSource>) -> Self {
        self.deliverer = self.deliverer.with_tokens(tokens);
        self
    }

    /// Brokers no `EventPolicy` selects accept what `mode` allows.
    pub fn with_default_access(mut self, mode: DefaultMode) -> Self {
        self.default_access = mode;
        self
    }

    /// Deliveries also trust these CA certificates (DER).
    pub fn trusting(mut self, roots: &[Vec<u8>]) -> Self {
        self.deliverer = Deliverer::trusting(roots);
        self
    }

    /// The ingress's route table (the running addresses and what they recorded).
    pub fn routes(&self) -> Routes {
        self.routes.clone()
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

    /// Moves the mesh to `desired`, changing only what differs: first decides what
    /// to change ([`plan`], which touches nothing), then carries it out in an order
    /// that never leaves a trigger reading a closed channel.
    pub async fn apply(&mut self, desired: Desired) {
        let running_triggers = self
            .triggers
            .iter()
            .map(|(k, t)| (k.clone(), t.handle.trigger()))
            .collect();
        let running_brokers = self
            .brokers
            .iter()
            .map(|(k, b)| (k.clone(), &b.desired))
            .collect();
        let plan = plan(&running_triggers, &running_brokers, &desired);
        self.policies = desired
            .brokers
            .keys()
            .map(|k| (k.clone(), desired.policies_of(k)))
            .collect();
        let mut outcome = Outcome {
            problems: desired.problems.iter().map(ToString::to_string).collect(),
            ..Outcome::default()
        };
        self.stop_triggers(&plan.stop).await;
        self.close_brokers(&plan.close);
        self.update_brokers(&plan.update, &desired, &mut outcome)
            .await;
        self.open_brokers(&plan.open, &desired, &mut outcome).await;
        self.publish_routes();
        let mut desired = desired;
        for key in &plan.start {
            if let Some(t) = desired.triggers.remove(key) {
                self.start_trigger(key.clone(), t, &mut outcome).await;
            }
        }
        // Again, now that the ingress can know the triggers' delivery formats.
        self.publish_routes();
        self.apply_sources(std::mem::take(&mut desired.sources), &mut outcome)
            .await;
        self.publish_status(outcome);
    }

    /// Sources follow their desired state: one gone, changed, or whose channel was
    /// reopened stops; a new (or changed) one starts.
    async fn apply_sources(
        &mut self,
        wanted: BTreeMap<String, SourceDesired>,
        outcome: &mut Outcome,
    ) {
        let keys: Vec<String> = self.sources.keys().cloned().collect();
        for key in keys {
            // A binding of the same service with a new environment rebinds (one
            // restart of the processes), rather than unbinding and binding.
            if let (Some(SourceDesired::Binding(new)), Some(running)) =
                (wanted.get(&key), self.sources.get_mut(&key))
            {
                if let SourceDesired::Binding(old) = &running.desired {
                    if old.service == new.service {
                        new.target.bind(new.env.clone());
                        running.desired = SourceDesired::Binding(new.clone());
                        continue;
                    }
                }
            }
            let running = &self.sources[&key];
            let keep = wanted.get(&key) == Some(&running.desired)
                && match (&running.handle, &running.desired) {
                    (SourceHandle::Ping(_, channel), SourceDesired::Ping(p)) => self
                        .brokers
                        .get(&BrokerKey::new(&p.namespace, ping_channel(&p.name)))
                        .is_some_and(|b| Arc::ptr_eq(&b.channel, channel)),
                    _ => true,
                };
            if !keep {
                if let Some(s) = self.sources.remove(&key) {
                    s.handle.stop().await;
                    tracing::info!(source = %key, "Source stopped");
                }
            }
        }
        for (key, d) in wanted {
            if self.sources.contains_key(&key) {
                continue;
            }
            let handle = match &d {
                SourceDesired::Ping(p) => {
                    let address = BrokerKey::new(&p.namespace, ping_channel(&p.name));
                    let Some(b) = self.brokers.get(&address) else {
                        let why = format!("its channel {address} is not running");
                        outcome.problems.push(format!("{key}: {why}"));
                        continue;
                    };
                    let mut spec = p.clone();
                    spec.state_file = self
                        .channels
                        .data_dir
                        .join("sources")
                        .join(format!("pingsource.{}.{}.last", p.namespace, p.name));
                    let channel = b.channel.clone();
                    SourceHandle::Ping(
                        spawn_ping(spec, channel.clone() as Arc<dyn Channel>),
                        channel,
                    )
                }
                SourceDesired::Process(spec) => SourceHandle::Process(spawn_process(spec.clone())),
                SourceDesired::Binding(b) => {
                    b.target.bind(b.env.clone());
                    SourceHandle::Binding(b.target.clone())
                }
            };
            tracing::info!(source = %key, "Source started");
            self.sources
                .insert(key, RunningSource { desired: d, handle });
        }
    }

    /// Stops triggers; a removed one also drops its subscription.
    async fn stop_triggers(&mut self, stop: &[(TriggerKey, bool)]) {
        for (key, removed) in stop {
            let Some(running) = self.triggers.remove(key) else {
                continue;
            };
            let broker_key = BrokerKey::new(&key.namespace, broker_of(&running));
            running.handle.stop().await;
            self.registry
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            if *removed {
                if let Some(b) = self.brokers.get(&broker_key) {
                    let _ = b.channel.unsubscribe(&key.subscription_name()).await;
                }
                tracing::info!(trigger = %key, "Trigger removed");
            }
        }
    }

    fn close_brokers(&mut self, close: &[BrokerKey]) {
        for key in close {
            if let Some(b) = self.brokers.remove(key) {
                self.channels.remove(key, b.desired.channel);
                tracing::info!(broker = %key, "Broker removed");
            }
        }
    }

    /// Brokers that keep their channel take their new settings; changed sled settings
    /// reopen the same channel (subscriptions carry on).
    async fn update_brokers(
        &mut self,
        update: &[(BrokerKey, bool)],
        desired: &Desired,
        outcome: &mut Outcome,
    ) {
        for (key, options_changed) in update {
            let (Some(d), Some(b)) = (desired.brokers.get(key), self.brokers.get_mut(key)) else {
                continue;
            };
            if *options_changed {
                if d.channel == ChannelKind::Sled {
                    if let Err(e) = self.channels.open(key, d).await {
                        outcome
                            .broker_failures
                            .insert(key.to_string(), e.to_string());
                        outcome.problems.push(e.to_string());
                    }
                } else {
                    tracing::warn!(broker = %key, "Changed channel settings of a memory broker apply after a restart");
                }
            }
            b.desired = d.clone();
        }
    }

    async fn open_brokers(&mut self, open: &[BrokerKey], desired: &Desired, outcome: &mut Outcome) {
        for key in open {
            let Some(d) = desired.brokers.get(key) else {
                continue;
            };
            match self.channels.open(key, d).await {
                Ok(channel) => {
                    let channel = Arc::new(Tapped::new(channel));
                    tracing::info!(broker = %key, channel = d.channel.as_str(), "Broker ready");
                    let event_types = crate::eventtypes::load(&self.channels.data_dir, key);
                    let dedup = d.dedup.map(|s| {
                        crate::dedup::load(&self.channels.data_dir, key, s.window, s.max_keys)
                    });
                    self.brokers.insert(
                        key.clone(),
                        RunningBroker {
                            desired: d.clone(),
                            channel,
                            event_types,
                            dedup,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(broker = %key, error = %e, "Broker not started");
                    outcome
                        .broker_failures
                        .insert(key.to_string(), e.to_string());
                    outcome.problems.push(e.to_string());
                }
            }
        }
    }

    /// The ingress's route table and the taps follow the running brokers.
    fn publish_routes(&mut self) {
        let table = self
            .brokers
            .iter()
            .filter(|(_, b)| b.desired.kind != AddressKind::Internal)
            .map(|(k, b)| {
                let endpoint = BrokerEndpoint {
                    key: k.clone(),
                    channel: b.channel.clone() as Arc<dyn Channel>,
                    max_body_bytes: usize::try_from(b.desired.max_body_bytes).unwrap_or(usize::MAX),
                    binary: Arc::new(self.binary_triggers(k)),
                    access: Arc::new(Access {
                        audience: Access::broker_audience(&k.namespace, &k.name),
                        policies: self.policies.get(k).cloned().unwrap_or_default(),
                        default: self.default_access,
                    }),
                    stamps: b.desired.kind == AddressKind::Broker,
                    event_types: b.event_types.clone(),
                    dedup: b.dedup.clone(),
                    journal: self.journal_of(&b.desired),
                    metrics: Default::default(),
                };
                (k.clone(), Arc::new(endpoint))
            })
            .collect();
        self.routes.replace(table);
        let mut taps = self.taps.write().unwrap_or_else(|p| p.into_inner());
        *taps = self
            .brokers
            .iter()
            .map(|(k, b)| (k.clone(), b.channel.clone()))
            .collect();
    }

    /// What the ingress asks of `broker`'s triggers before refusing an event too
    /// large for binary-mode headers.
    fn binary_triggers(&self, broker: &BrokerKey) -> BinaryTriggers {
        let mut any = false;
        let mut filters = Vec::new();
        for (key, t) in &self.triggers {
            let rt = t.handle.trigger();
            if key.namespace != broker.namespace || rt.broker != broker.name {
                continue;
            }
            any = true;
            if rt.delivery.format == Format::Binary {
                filters.push(rt.filter.clone());
            }
        }
        BinaryTriggers { any, filters }
    }

    async fn start_trigger(&mut self, key: TriggerKey, t: TriggerDesired, outcome: &mut Outcome) {
        let broker_key = BrokerKey::new(&key.namespace, &t.runtime.broker);
        let Some(broker) = self.brokers.get(&broker_key) else {
            let why = format!("broker {broker_key} is not running");
            outcome.problems.push(format!("trigger {key}: {why}"));
            outcome.trigger_failures.insert(key.to_string(), why);
            return;
        };
        let sub = match broker
            .channel
            .subscribe(&key.subscription_name(), t.start)
            .await
        {
            Ok(sub) => sub,
            Err(e) => {
                tracing::error!(trigger = %key, error = %e, "Trigger not started");
                outcome.problems.push(format!("trigger {key}: {e}"));
                outcome
                    .trigger_failures
                    .insert(key.to_string(), e.to_string());
                return;
            }
        };
        let reply_channel = match &t.runtime.reply {
            ReplyTo::Local { namespace, name } => {
                let target = BrokerKey::new(namespace, name);
                match self.brokers.get(&target) {
                    Some(b) => Some(b.channel.clone() as Arc<dyn Channel>),
                    None => {
                        let why = format!("its reply target {target} is not running");
                        outcome.problems.push(format!("trigger {key}: {why}"));
                        outcome.trigger_failures.insert(key.to_string(), why);
                        return;
                    }
                }
            }
            _ => None,
        };
        let dead_letters = match self.channels.dead_letters(broker.desired.channel) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(trigger = %key, error = %e, "Trigger not started");
                outcome.problems.push(format!("trigger {key}: {e}"));
                outcome
                    .trigger_failures
                    .insert(key.to_string(), e.to_string());
                return;
            }
        };
        let context = Arc::new(TriggerContext {
            breaker: Arc::new(Breaker::new(t.runtime.delivery.breaker)),
            pause: Default::default(),
            runtime: Arc::new(t.runtime),
            deliverer: self.deliverer.clone(),
            broker: broker.channel.clone(),
            reply_channel,
            dead_letters,
            stats: Arc::default(),
            metrics: Arc::default(),
            journal: self.journal_of(&broker.desired),
            subscriber_uri: Default::default(),
        });
        self.registry
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), context.clone());
        let handle = spawn_trigger(context, sub);
        self.triggers.insert(key, RunningTrigger { handle });
    }

    /// Moves a running trigger's cursor to `at`: stops its loop (deliveries in
    /// flight finish and are acked), moves the cursor, starts the loop again. A move
    /// forward skips events and is refused unless `force`.
    pub async fn reset_cursor(
        &mut self,
        key: &TriggerKey,
        at: cemesh_channels::StartAt,
        force: bool,
    ) -> Result<CursorReset, crate::point::LogError> {
        let running = self
            .triggers
            .get(key)
            .ok_or_else(|| LogError::NotFound(format!("trigger {key} is not running")))?;
        let broker_key = BrokerKey::new(&key.namespace, broker_of(running));
        let channel: Arc<dyn Channel> = match self.brokers.get(&broker_key) {
            Some(b) => b.channel.clone(),
            None => {
                return Err(LogError::NotFound(format!(
                    "broker {broker_key} is not running"
                )))
            }
        };
        let name = key.subscription_name();
        let target = channel.offsets_at(at).await?;
        let runtime = running.handle.trigger().clone();
        let running = self.triggers.remove(key).expect("looked up above");
        running.handle.stop().await;
        let result = async {
            let before = channel.committed(&name).await?;
            let (skipped, again) = compare(&before, &target);
            if skipped > 0 && !force {
                return Err(LogError::Conflict(format!(
                    "moving trigger {key}'s cursor to {} would skip {skipped} events it has not delivered; add force to skip them",
                    show_positions(&target)
                )));
            }
            channel.seek(&name, &target).await?;
            tracing::warn!(trigger = %key, from = %show_positions(&before), to = %show_positions(&target), skipped, again, "Trigger cursor moved");
            Ok(CursorReset { trigger: key.to_string(), from: before, to: target, skipped, again })
        }
        .await;
        let mut outcome = Outcome::default();
        self.start_trigger(
            key.clone(),
            TriggerDesired {
                runtime,
                start: cemesh_channels::StartAt::Latest,
            },
            &mut outcome,
        )
        .await;
        for p in outcome.problems {
            tracing::error!(trigger = %key, problem = %p, "Trigger not restarted after moving its cursor");
        }
        result
    }

    fn publish_status(&mut self, mut outcome: Outcome) {
        // A process serving no broker at all must not pass a readiness probe.
        if self.brokers.is_empty() {
            outcome.problems.push(NO_BROKER.to_owned());
        }
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        *status = MeshStatus {
            ready: outcome.broker_failures.is_empty()
                && outcome.trigger_failures.is_empty()
                && !self.brokers.is_empty(),
            brokers: self.brokers.keys().map(ToString::to_string).collect(),
            triggers: self.triggers.keys().map(ToString::to_string).collect(),
            problems: outcome.problems,
            rejected_reload: Vec::new(),
            broker_failures: outcome.broker_failures,
            trigger_failures: outcome.trigger_failures,
        };
    }

    /// Stops every trigger (in-flight deliveries finish) and drops the channels.
    /// Attempts in flight get up to `grace` to finish; whatever is not finished by
    /// then stays unacked and is delivered again after a restart.
    pub async fn shutdown(&mut self, grace: Duration) {
        self.background.cancel();
        for (_, s) in std::mem::take(&mut self.sources) {
            s.handle.stop().await;
        }
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
        crate::eventtypes::flush(&self.routes, &self.channels.data_dir);
        crate::dedup::flush(&self.routes, &self.channels.data_dir);
        self.routes.replace(Default::default());
        self.brokers.clear();
        self.taps.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.channels.close().await;
    }
}

/// What one `apply` changes, decided before anything is touched.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// Triggers to stop; `true` when the trigger is gone (its subscription goes too),
    /// `false` when it restarts (changed, or its broker's channel changes).
    stop: Vec<(TriggerKey, bool)>,
    /// Brokers to close.
    close: Vec<BrokerKey>,
    /// Brokers that keep their channel; `true` when its settings changed.
    update: Vec<(BrokerKey, bool)>,
    /// Brokers to open: new ones, and those whose channel kind changed.
    open: Vec<BrokerKey>,
    /// Triggers to start: new, changed, or on a reopened broker.
    start: Vec<TriggerKey>,
}

/// What the failures of one `apply` were, for `/readyz`.
#[derive(Debug, Default)]
struct Outcome {
    problems: Vec<String>,
    broker_failures: BTreeMap<String, String>,
    trigger_failures: BTreeMap<String, String>,
}

/// The difference between what runs and what is desired. A trigger keeps running
/// only if its runtime is equal and its broker keeps the same channel kind.
fn plan(
    triggers: &BTreeMap<TriggerKey, &TriggerRuntime>,
    brokers: &BTreeMap<BrokerKey, &BrokerDesired>,
    desired: &Desired,
) -> Plan {
    let mut plan = Plan::default();
    let channel_changes = |key: &BrokerKey| match (desired.brokers.get(key), brokers.get(key)) {
        (Some(d), Some(b)) => d.channel != b.channel,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let mut kept = Vec::new();
    for (key, running) in triggers {
        let wanted = desired.triggers.get(key).map(|t| &t.runtime);
        let broker_key = BrokerKey::new(&key.namespace, &running.broker);
        // A local reply target's channel is held too.
        let reply_changes = match &running.reply {
            ReplyTo::Local { namespace, name } => channel_changes(&BrokerKey::new(namespace, name)),
            _ => false,
        };
        if wanted == Some(*running) && !channel_changes(&broker_key) && !reply_changes {
            kept.push(key);
        } else {
            plan.stop.push((key.clone(), wanted.is_none()));
        }
    }
    plan.close = brokers
        .keys()
        .filter(|k| !desired.brokers.contains_key(*k))
        .cloned()
        .collect();
    for (key, d) in &desired.brokers {
        match brokers.get(key) {
            Some(b) if b.channel == d.channel => plan
                .update
                .push((key.clone(), b.channel_options != d.channel_options)),
            _ => plan.open.push(key.clone()),
        }
    }
    plan.start = desired
        .triggers
        .keys()
        .filter(|k| !kept.contains(k))
        .cloned()
        .collect();
    plan
}

/// What moving a cursor did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CursorReset {
    pub trigger: String,
    pub from: Vec<cemesh_channels::Position>,
    pub to: Vec<cemesh_channels::Position>,
    /// Events skipped (the cursor moved forward over them).
    pub skipped: u64,
    /// Events to be delivered again (the cursor moved back over them).
    pub again: u64,
}

/// How many offsets a move from `before` to `after` skips and repeats.
fn compare(
    before: &[cemesh_channels::Position],
    after: &[cemesh_channels::Position],
) -> (u64, u64) {
    let (mut skipped, mut again) = (0, 0);
    for a in after {
        if let Some(b) = before.iter().find(|b| b.partition == a.partition) {
            skipped += a.offset.saturating_sub(b.offset);
            again += b.offset.saturating_sub(a.offset);
        }
    }
    (skipped, again)
}

fn show_positions(p: &[cemesh_channels::Position]) -> String {
    match p {
        [one] if one.partition == 0 => one.offset.to_string(),
        _ => p
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn broker_of(t: &RunningTrigger) -> &str {
    &t.handle.trigger().broker
}

#[cfg(test)]
mod tests {
    use cemesh_channels::StartAt;
    use cemesh_dispatcher::{DeliverySpec, Filter};

    use super::*;
    use crate::manifest::ChannelOptions;

    fn broker(name: &str, channel: ChannelKind) -> BrokerDesired {
        BrokerDesired {
            key: BrokerKey::new("default", name),
            kind: AddressKind::Broker,
            channel,
            channel_options: ChannelOptions::default(),
            annotations: BTreeMap::new(),
            max_body_bytes: 1 << 20,
            delivery: None,
            source_topic: None,
            dedup: None,
            journal: true,
        }
    }

    fn trigger(name: &str, broker: &str, parallelism: usize) -> TriggerDesired {
        TriggerDesired {
            runtime: TriggerRuntime {
                key: TriggerKey::new("default", name),
                broker: broker.into(),
                filter: Filter::All,
                subscriber: "http://127.0.0.1:1/".parse().unwrap(),
                delivery: DeliverySpec::default(),
                parallelism,
                borrows: false,
                endpoints: None,
                max_lag: Default::default(),
                auth: Default::default(),
                dead_letter_auth: Default::default(),
                reply: Default::default(),
            },
            start: StartAt::Latest,
        }
    }

    fn desired(brokers: &[BrokerDesired], triggers: &[TriggerDesired]) -> Desired {
        Desired {
            brokers: brokers.iter().map(|b| (b.key.clone(), b.clone())).collect(),
            triggers: triggers
                .iter()
                .map(|t| (t.runtime.key.clone(), t.clone()))
                .collect(),
            policies: Default::default(),
            problems: Vec::new(),
            status: Default::default(),
            sources: Default::default(),
        }
    }

    /// Runs `plan` with `running` as what runs now.
    fn diff(running: &Desired, wanted: &Desired) -> Plan {
        let triggers = running
            .triggers
            .iter()
            .map(|(k, t)| (k.clone(), &t.runtime))
            .collect();
        let brokers = running
            .brokers
            .iter()
            .map(|(k, b)| (k.clone(), b))
            .collect();
        plan(&triggers, &brokers, wanted)
    }

    fn tk(name: &str) -> TriggerKey {
        TriggerKey::new("default", name)
    }

    fn bk(name: &str) -> BrokerKey {
        BrokerKey::new("default", name)
    }

    #[test]
    fn nothing_changes_when_nothing_differs() {
        let now = desired(&[broker("b", ChannelKind::Sled)], &[trigger("t", "b", 64)]);
        let plan = diff(&now, &now);
        assert_eq!(
            plan,
            Plan {
                update: vec![(bk("b"), false)],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_changed_trigger_restarts_and_a_removed_one_is_dropped() {
        let now = desired(
            &[broker("b", ChannelKind::Sled)],
            &[
                trigger("same", "b", 64),
                trigger("changed", "b", 64),
                trigger("gone", "b", 64),
            ],
        );
        let next = desired(
            &[broker("b", ChannelKind::Sled)],
            &[
                trigger("same", "b", 64),
                trigger("changed", "b", 8),
                trigger("new", "b", 64),
            ],
        );
        let plan = diff(&now, &next);
        assert_eq!(plan.stop, vec![(tk("changed"), false), (tk("gone"), true)]);
        assert_eq!(plan.start, vec![tk("changed"), tk("new")]);
        assert!(plan.open.is_empty() && plan.close.is_empty());
    }

    #[test]
    fn brokers_open_close_and_reopen_with_their_triggers() {
        let now = desired(
            &[
                broker("kept", ChannelKind::Sled),
                broker("gone", ChannelKind::Sled),
                broker("kind", ChannelKind::Sled),
            ],
            &[
                trigger("on-kind", "kind", 64),
                trigger("on-gone", "gone", 64),
            ],
        );
        let mut tuned = broker("kept", ChannelKind::Sled);
        tuned.channel_options.max_backlog_records = 10;
        let next = desired(
            &[
                tuned,
                broker("kind", ChannelKind::Memory),
                broker("new", ChannelKind::Memory),
            ],
            &[trigger("on-kind", "kind", 64)],
        );
        let plan = diff(&now, &next);
        assert_eq!(plan.close, vec![bk("gone")]);
        assert_eq!(plan.open, vec![bk("kind"), bk("new")]);
        assert_eq!(plan.update, vec![(bk("kept"), true)]);
        // A trigger whose broker changes channel kind restarts on the new channel.
        assert_eq!(
            plan.stop,
            vec![(tk("on-gone"), true), (tk("on-kind"), false)]
        );
        assert_eq!(plan.start, vec![tk("on-kind")]);
    }
}
