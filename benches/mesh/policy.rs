//! One policy decision each, on the request path: a rate-limit check, a breaker admission
//! with its outcome recorded, and a token attached to a request.

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::Criterion;
use proxyless::breaker::{Breaker, BreakerConfig};
use proxyless::classify::Outcome;
use proxyless::limit::{OnExceed, Rate, RateLimiterState};

pub(crate) fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    // A rate no benchmark can reach: every check admits.
    let limiter = RateLimiterState::new(
        Rate::per_second(NonZeroU32::new(1_000_000_000).expect("above 0")),
        OnExceed::FailFast,
    )
    .expect("valid rate");
    group.bench_function("rate_limit_check", |b| {
        b.iter(|| black_box(limiter.check()))
    });

    let breaker = Breaker::new(BreakerConfig::default()).expect("valid breaker");
    group.bench_function("breaker_admit_record", |b| {
        b.iter(|| {
            breaker
                .try_acquire()
                .expect("closed")
                .record(black_box(Outcome::Success))
        })
    });
    token(&mut group);
    group.finish();
}

/// A signed, cached JWT attached by the layer around a service that does nothing.
fn token(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use futures_util::FutureExt;
    use proxyless::auth::{AttachTokenLayer, JwtSigner, SigningKey};
    use proxyless::{Secret, auth::Algorithm};
    use tower::{Layer, Service, ServiceExt};

    let key = SigningKey::hmac(
        Algorithm::HS256,
        &Secret::new("a-benchmark-secret-of-32-bytes!!"),
    )
    .expect("valid key");
    let signer = JwtSigner::builder(key).build().expect("valid signer");
    let inner =
        tower::service_fn(
            |request: reqwest::Request| async move { Ok::<_, proxyless::Error>(request) },
        );
    let service = AttachTokenLayer::new(signer).layer(inner);
    let url: reqwest::Url = "http://orders/v1/items".parse().expect("url");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    // The first call signs; the benchmark measures the cached path.
    let first = reqwest::Request::new(reqwest::Method::GET, url.clone());
    service
        .clone()
        .oneshot(first)
        .now_or_never()
        .expect("ready")
        .expect("signed");
    group.bench_function("token_attach", |b| {
        b.iter_batched(
            || {
                (
                    service.clone(),
                    reqwest::Request::new(reqwest::Method::GET, url.clone()),
                )
            },
            |(mut service, request)| {
                service
                    .call(request)
                    .now_or_never()
                    .expect("cached")
                    .expect("attached")
            },
            criterion::BatchSize::SmallInput,
        )
    });
}
