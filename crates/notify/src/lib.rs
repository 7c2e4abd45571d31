//! Chat notifications: Teams, Slack, signed webhook.
//!
//! The act stage turns a policy's `notify` action into a [`Notification`] and hands it
//! to a [`Notifier`], which looks the channel up by name, renders the payload its kind
//! expects and posts it with bounded retries. Every send ends in a [`Delivery`] the
//! caller records; nothing here panics or blocks past the [`RetryPolicy`]'s budget.
//!
//! - [`channel`]: named channels from configuration ([`ChannelConfig`], [`Channels`]).
//! - [`notification`]: the message model ([`Notification`]) and its portal links.
//! - [`teams`], [`slack`], [`webhook`]: one payload builder per channel kind; the
//!   webhook module also signs and verifies (HMAC-SHA256, see the crate README).
//! - [`dedupe`]: the stable key `(rule, resource, key version)` the ledger stores.
//! - [`send`]: the HTTP sender with retries, jittered backoff and `Retry-After`.
//! - [`redact`]: webhook URLs are secrets; how they appear in logs and errors.
//! - [`sink`] (feature `sink`, on by default): a local chat receiver for tests and the demo.

pub mod channel;
pub mod dedupe;
pub mod notification;
pub mod redact;
pub mod send;
#[cfg(feature = "sink")]
pub mod sink;
pub mod slack;
pub mod teams;
pub mod webhook;

pub use channel::{ChannelConfig, ChannelError, ChannelKind, Channels, SigningKey};
pub use dedupe::DedupeKey;
pub use notification::{EventRef, KeyRef, Link, Notification, Portal, RegistryRef};
pub use redact::SecretUrl;
pub use send::{Delivery, Notifier, RetryPolicy};
