//! Leader election on a `coordination.k8s.io/v1` Lease: the holder writes statuses,
//! every replica serves traffic.
//!
//! As client-go's leader election does, a replica judges another's lease expired by
//! its own clock: the lease is free when its record has not changed for a whole lease
//! duration since this replica last saw it change, so clock skew between nodes does
//! not matter. Updates carry the resourceVersion read, so two replicas cannot both
//! take a lease. On shutdown the holder releases the lease for a fast hand-over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

impl Election {
    /// Runs until `stop` fires, publishing whether this replica leads on `leader`.
    pub async fn run(
        self,
        client: kube::Client,
        leader: watch::Sender<bool>,
        mut stop: watch::Receiver<bool>,
    ) {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        // The other holder's record and when this replica saw it change.
        let mut observed: Option<(Option<String>, Option<MicroTime>, Instant)> = None;
        let mut last_renew: Option<Instant> = None;
        let retry = (self.duration / 4).max(Duration::from_millis(500));
        loop {
            let leads = match self.step(&api, &mut observed).await {
                Ok(leads) => {
                    if leads {
                        last_renew = Some(Instant::now());
                    }
                    leads
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, "lease update failed: {e}");
                    // Without a renewal for a whole duration another replica may take
                    // over; stop writing before that can happen.
                    last_renew.is_some_and(|t| t.elapsed() < self.duration / 2)
                }
            };
            if leads != *leader.borrow() {
                tracing::info!(
                    identity = %self.identity,
                    lease = %format!("{}/{}", self.namespace, self.name),
                    "{}",
                    if leads { "leading: this replica writes statuses" } else { "following: another replica writes statuses" }
                );
                leader.send_replace(leads);
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.changed() => break,
            }
        }
        if *leader.borrow() {
            leader.send_replace(false);
            if let Err(e) = self.release(&api).await {
                tracing::warn!(lease = %self.name, "cannot release the lease: {e}");
            }
        }
    }

    /// One round: read the lease and create, renew or take it; whether we hold it.
    async fn step(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<(Option<String>, Option<MicroTime>, Instant)>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !mine && holder.is_some() {
            let record = (holder.clone(), spec.renew_time.clone());
            let changed = observed
                .as_ref()
                .is_none_or(|(h, r, _)| (h, r) != (&record.0, &record.1));
            if changed {
                *observed = Some((record.0, record.1, Instant::now()));
            }
            let theirs = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                .unwrap_or(self.duration);
            let seen = observed
                .as_ref()
                .map(|(_, _, t)| *t)
                .unwrap_or_else(Instant::now);
            if seen.elapsed() < theirs {
                return Ok(false);
            }
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(secs);
        // The resourceVersion read makes this a compare-and-swap.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self, api: &Api<Lease>) -> Result<(), kube::Error> {
        let mut lease = api.get(&self.name).await?;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        api.replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}
