//! The route gauges (weight, phase, endpoints): set only for routes in use, only on change.

use canary_proxy::Variant;

use crate::rollout::Phase;

use super::{Controller, Inner};

/// One route's gauge values as last published.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gauges {
    weight_ppm: u32,
    phase: Phase,
    /// (healthy, total) per variant, when the route is in the table.
    endpoints: [Option<(usize, usize)>; 3],
}

impl Controller {
    /// Sets the gauges of the routes whose values changed since last time. A route gets
    /// series once it is in use (it has served a request, has a canary, an analysis, a weight
    /// or a rollout), so thousands of idle routes cost no series and no work per tick.
    pub(super) fn publish_gauges(&self, inner: &mut Inner) {
        let table = self.table.load();
        let Inner {
            config,
            store,
            published,
            route_index,
            ..
        } = inner;
        let mut in_use_count = 0;
        for route in &config.routes {
            let Some(state) = store.state.routes.get(&route.name) else {
                continue;
            };
            // Cheapest tests first: most routes of a large config are idle.
            let has_canary = route.rollout.analysis.is_some()
                || !route.canary.endpoints.is_empty()
                || route.canary.kubernetes.is_some()
                || state.weight_ppm > 0
                || state.rollout.phase != Phase::Idle;
            let served = table.route(&route.name);
            let in_use = has_canary || served.is_some_and(|r| r.has_served());
            if !in_use {
                if published.remove(&route.name).is_some() {
                    self.control_metrics.forget_route(&route.name);
                }
                continue;
            }
            in_use_count += 1;
            let now = Gauges {
                weight_ppm: state.weight_ppm,
                phase: state.rollout.phase,
                endpoints: Variant::ALL.map(|v| {
                    served
                        .filter(|r| r.variants().contains(&v))
                        .map(|r| r.healthy_endpoints(v))
                }),
            };
            let last = published.get(&route.name);
            if last.map(|g| (g.weight_ppm, g.phase)) != Some((now.weight_ppm, now.phase)) {
                self.control_metrics
                    .route_state(&route.name, state.weight().percent() / 100.0, state.rollout.phase);
            }
            for v in Variant::ALL {
                let counts = now.endpoints[v as usize];
                if let Some((healthy, total)) = counts.filter(|_| last.map(|g| g.endpoints[v as usize]) != Some(counts))
                {
                    self.control_metrics.endpoints(&route.name, v.as_str(), healthy, total);
                }
            }
            if last != Some(&now) {
                published.insert(route.name.clone(), now);
            }
        }
        // Routes no longer configured: their series go.
        if published.len() > in_use_count {
            published.retain(|name, _| {
                let keep = route_index.contains_key(name);
                if !keep {
                    self.control_metrics.forget_route(name);
                }
                keep
            });
        }
    }
}
