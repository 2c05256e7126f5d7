//! The tap's judge: one passive protocol model for the server behind the tap, fed the
//! connections one after another as the server serves them.
//!
//! A server serves one client at a time; a second client that connects meanwhile waits (its
//! VERSION is answered once the first has gone). The tap relays both at once, so the judge
//! keeps what a later connection sends until the earlier one is over, then tells the model
//! that a client left and another came, and replays the later one's messages. A connection
//! that piles up more than [`QUEUE_LIMIT`] messages while it waits is not judged (and says
//! so) rather than kept without bound. A new server process (its pid changed) gets a fresh
//! model: nothing it said before binds it.

use std::collections::VecDeque;

use crate::model::{Event, Msg, ServerModel};

/// Messages kept of a connection waiting to be judged.
pub(super) const QUEUE_LIMIT: usize = 100_000;

/// What a waiting connection did, in order.
#[derive(Debug)]
enum Item {
    Message(Msg),
    Damaged,
}

/// A connection that began while another was being judged.
#[derive(Debug)]
struct Waiting {
    connection: u64,
    fresh_server: bool,
    items: Vec<Item>,
    over: bool,
    overflowed: bool,
}

/// A finding, with the connection it was made on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub connection: u64,
    pub text: String,
}

/// The passive model across the tap's connections.
#[derive(Debug)]
pub(super) struct Judge {
    model: ServerModel,
    current: Option<u64>,
    waiting: VecDeque<Waiting>,
    found: Vec<Found>,
    notes: Vec<(u64, String)>,
}

impl Default for Judge {
    fn default() -> Self {
        Self {
            model: ServerModel::passive(),
            current: None,
            waiting: VecDeque::new(),
            found: Vec::new(),
            notes: Vec::new(),
        }
    }
}

impl Judge {
    /// A client connected; `fresh_server` when the server behind it is another process than
    /// the last one's.
    pub(super) fn connected(&mut self, connection: u64, fresh_server: bool) {
        if self.current.is_none() {
            self.start(connection, fresh_server);
        } else {
            let w = Waiting { connection, fresh_server, items: Vec::new(), over: false, overflowed: false };
            self.waiting.push_back(w);
        }
    }

    /// A message of `connection`.
    pub(super) fn message(&mut self, connection: u64, m: Msg) {
        if self.current == Some(connection) {
            self.model.message(m);
            self.collect();
        } else {
            self.queue(connection, Item::Message(m));
        }
    }

    /// A malformed message passed on `connection`: what follows cannot be judged until the
    /// next connection.
    pub(super) fn damaged(&mut self, connection: u64) {
        if self.current == Some(connection) {
            self.model.event(Event::Damaged);
        } else {
            self.queue(connection, Item::Damaged);
        }
    }

    /// `connection` is over.
    pub(super) fn disconnected(&mut self, connection: u64) {
        if self.current != Some(connection) {
            if let Some(w) = self.waiting.iter_mut().find(|w| w.connection == connection) {
                w.over = true;
            }
            return;
        }
        self.model.event(Event::Disconnected);
        self.collect();
        self.current = None;
        while let Some(w) = self.waiting.pop_front() {
            if w.overflowed {
                let note =
                    format!("not judged: more than {QUEUE_LIMIT} messages came while an earlier client was served");
                self.notes.push((w.connection, note));
                if w.over {
                    continue;
                }
                // Its later messages are not judged either: the model lost its beginning.
                self.waiting.push_front(Waiting { items: Vec::new(), overflowed: false, ..w });
                if let Some(front) = self.waiting.front_mut() {
                    front.items.push(Item::Damaged);
                }
                continue;
            }
            self.start(w.connection, w.fresh_server);
            for item in w.items {
                match item {
                    Item::Message(m) => self.model.message(m),
                    Item::Damaged => self.model.event(Event::Damaged),
                }
                self.collect();
            }
            if !w.over {
                return;
            }
            self.model.event(Event::Disconnected);
            self.collect();
            self.current = None;
        }
    }

    /// Findings since the last call.
    pub(super) fn take_findings(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.found)
    }

    /// What the judge has to say about connections it could not judge, since the last call.
    pub(super) fn take_notes(&mut self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.notes)
    }

    fn start(&mut self, connection: u64, fresh_server: bool) {
        if fresh_server {
            self.model = ServerModel::passive();
        }
        self.model.event(Event::Connected);
        self.current = Some(connection);
    }

    fn queue(&mut self, connection: u64, item: Item) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.connection == connection)
            && !w.overflowed
        {
            if w.items.len() < QUEUE_LIMIT {
                w.items.push(item);
            } else {
                w.items.clear();
                w.overflowed = true;
            }
        }
    }

    fn collect(&mut self) {
        if let Some(connection) = self.current {
            self.found.extend(self.model.take_findings().into_iter().map(|text| Found { connection, text }));
            // Known deviations are findings too, named as such: where implementations differ.
            self.found.extend(
                self.model
                    .take_deviations()
                    .into_iter()
                    .map(|d| Found { connection, text: format!("deviation {}: {}", d.deviation.kind(), d.text) }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;
    use vfu_server::wire::{Command, FLAG_ERROR, Header, TYPE_COMMAND, TYPE_REPLY};

    use super::*;
    use crate::model::Dir;

    fn version(dir: Dir, msg_id: u16) -> Msg {
        let flags = if dir == Dir::ToServer { TYPE_COMMAND } else { TYPE_REPLY };
        let payload = b"\0\0\x02\0{}\0";
        let h =
            Header { msg_id, cmd: Command::Version as u16, msg_size: 16 + payload.len() as u32, flags, error_no: 0 };
        Msg::new(dir, &h, &[payload], 0)
    }

    fn reset_refused(msg_id: u16) -> [Msg; 2] {
        let ask = Header { msg_id, cmd: Command::DeviceReset as u16, msg_size: 16, flags: TYPE_COMMAND, error_no: 0 };
        let no = Header { flags: TYPE_REPLY | FLAG_ERROR, error_no: 22, ..ask };
        [Msg::new(Dir::ToServer, &ask, &[], 0), Msg::new(Dir::ToClient, &no, &[], 0)]
    }

    #[test]
    fn a_client_that_connects_while_another_is_served_is_judged_after_it() {
        let mut j = Judge::default();
        j.connected(0, true);
        j.message(0, version(Dir::ToServer, 1));
        j.connected(1, false);
        // The second client's VERSION waits in the server's backlog, and in the judge.
        j.message(1, version(Dir::ToServer, 1));
        j.message(0, version(Dir::ToClient, 1));
        assert_eq!(j.take_findings(), vec![]);
        j.disconnected(0);
        j.message(1, version(Dir::ToClient, 1));
        assert_eq!(j.take_findings(), vec![], "each VERSION met its own reply");
    }

    #[test]
    fn findings_name_the_connection_they_were_made_on() {
        let mut j = Judge::default();
        j.connected(0, true);
        j.connected(1, false);
        j.message(1, version(Dir::ToServer, 1));
        j.message(1, version(Dir::ToClient, 1));
        for m in reset_refused(2) {
            j.message(1, m);
        }
        j.disconnected(1);
        assert_eq!(j.take_findings(), vec![], "connection 1 waits for connection 0");
        j.disconnected(0);
        let found = j.take_findings();
        assert_eq!(found.len(), 0, "a passive model admits a refused reset: {found:?}");
        let mut k = Judge::default();
        k.connected(0, true);
        k.message(0, version(Dir::ToClient, 9));
        assert_eq!(k.take_findings().iter().map(|f| f.connection).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_connection_that_overflows_its_queue_is_not_judged_and_says_so() {
        let mut j = Judge::default();
        j.connected(0, true);
        j.connected(1, false);
        for _ in 0..=QUEUE_LIMIT {
            j.message(1, version(Dir::ToClient, 3));
        }
        j.disconnected(0);
        assert_eq!(j.take_findings(), vec![], "replies to nothing, but never judged");
        let notes = j.take_notes();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].0, 1);
        j.message(1, version(Dir::ToClient, 4));
        assert_eq!(j.take_findings(), vec![], "nor what it sends later");
    }
}
