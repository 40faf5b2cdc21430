//! A `tracing` layer that records span and event fields, for assertions.

use parking_lot::Mutex;
use std::{collections::BTreeMap, fmt, sync::Arc};
use tracing::{
    field::{Field, Visit},
    span, Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

pub(crate) type Fields = BTreeMap<String, String>;

/// Everything recorded: spans (name, fields) and events (own fields merged with the fields
/// of every span in their scope, under `span.<name>`).
#[derive(Clone, Default)]
pub(crate) struct Capture {
    pub(crate) spans: Arc<Mutex<Vec<(&'static str, Fields)>>>,
    pub(crate) events: Arc<Mutex<Vec<Fields>>>,
}

impl Capture {
    /// Installs a subscriber with this capture as the thread's default until the guard drops.
    pub(crate) fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let guard = tracing::subscriber::set_default(subscriber);
        (capture, guard)
    }

    pub(crate) fn spans_named(&self, name: &str) -> Vec<Fields> {
        self.spans
            .lock()
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }

    pub(crate) fn events_with_message(&self, message: &str) -> Vec<Fields> {
        self.events
            .lock()
            .iter()
            .filter(|f| f.get("message").map(String::as_str) == Some(message))
            .cloned()
            .collect()
    }

    /// Every recorded string, for "never logged" assertions.
    pub(crate) fn all_text(&self) -> String {
        let mut out = String::new();
        for (name, fields) in self.spans.lock().iter() {
            out.push_str(name);
            for (k, v) in fields {
                out.push_str(&format!(" {k}={v}"));
            }
            out.push('\n');
        }
        for fields in self.events.lock().iter() {
            for (k, v) in fields {
                out.push_str(&format!(" {k}={v}"));
            }
            out.push('\n');
        }
        out
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S> Layer<S> for Capture
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields.clone());
        }
        self.spans.lock().push((attrs.metadata().name(), fields));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<Fields>() {
                    for (k, v) in span_fields {
                        fields.insert(format!("span.{k}"), v.clone());
                    }
                }
            }
        }
        self.events.lock().push(fields);
    }
}
