//! The model judging a conversation it only watches (`miglab tap`): it learns from what passes
//! by and admits what it cannot know, and still finds what the specification forbids.

use pretty_assertions::assert_eq;

use super::*;

impl Talk {
    /// A passive model that saw a client connect and negotiate; `caps` is the server's
    /// capabilities JSON. Nothing about the device was asked.
    fn passive(caps: &str) -> Self {
        let mut t = Talk { model: ServerModel::passive(), next_id: 0 };
        t.model.event(Event::Connected);
        let mut version = vec![0, 0, 2, 0];
        version.extend_from_slice(b"{}\0");
        let mut reply = vec![0, 0, 2, 0];
        reply.extend_from_slice(caps.as_bytes());
        reply.push(0);
        assert!(t.ok(Command::Version, &version, 0, &reply).is_empty(), "negotiation");
        t
    }

    fn get_state(&mut self, state: MigState) -> Vec<String> {
        let mut get = vec![16, 0, 0, 0];
        get.extend_from_slice(&(FEATURE_GET | FEATURE_MIG_DEVICE_STATE).to_le_bytes());
        get.extend_from_slice(&[0; 8]);
        let mut reply = get.clone();
        reply[8..12].copy_from_slice(&(state as u32).to_le_bytes());
        self.ok(Command::DeviceFeature, &get, 0, &reply)
    }

    fn set_refused(&mut self, state: MigState, errno: Errno) -> Vec<String> {
        self.err(Command::DeviceFeature, &set_payload(state), errno)
    }
}

const MIGRATES: &str = r#"{"capabilities": {"migration": {"pgsize": 4096}}}"#;

fn get_migration(flags: u64) -> (Vec<u8>, Vec<u8>) {
    let mut get = vec![16, 0, 0, 0];
    get.extend_from_slice(&(FEATURE_GET | vfu_server::wire::FEATURE_MIGRATION).to_le_bytes());
    get.extend_from_slice(&[0; 8]);
    let mut reply = get.clone();
    reply[8..16].copy_from_slice(&flags.to_le_bytes());
    (get, reply)
}

#[test]
fn a_reply_to_no_request_awaiting_one_is_a_finding_of_a_passive_model() {
    let mut t = Talk::passive(MIGRATES);
    let read = RegionAccess { offset: 0, region: 0, count: 4 }.as_bytes().to_vec();
    let id = t.send(Command::RegionRead as u16, &read, 0, 0);
    t.model.message(msg(Dir::ToClient, id + 7, Command::RegionRead as u16, TYPE_REPLY, 0, 0, &[0; 20]));
    let found = t.model.take_findings();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains(&format!("msg_id {}", id + 7)) && found[0].contains("no request"), "{found:?}");
}

#[test]
fn the_state_at_connect_is_unknown_until_a_successful_set_says_where_the_device_is() {
    let mut t = Talk::passive(MIGRATES);
    assert_eq!(t.model.state(), None);
    // From wherever it was, STOP_COPY may be reachable: admitted, and now known.
    assert!(t.set_state(MigState::StopCopy).is_empty());
    assert_eq!(t.model.state(), Some(MigState::StopCopy));
    let found = t.set_state(MigState::PreCopy);
    assert_eq!(found.len(), 1, "STOP_COPY→PRE_COPY must fail: {found:?}");
}

#[test]
fn a_get_of_the_state_tells_a_passive_model_where_the_device_is() {
    let mut t = Talk::passive(MIGRATES);
    assert!(t.get_state(MigState::Stop).is_empty());
    assert_eq!(t.model.state(), Some(MigState::Stop));
    let write = region_write(2, 0, &[1]);
    assert!(t.ok(Command::RegionWrite, &write, 0, &write[..16]).is_empty(), "a stopped device may take writes");
    assert!(t.err(Command::RegionWrite, &write, Errno::EBUSY).is_empty(), "or refuse them");
    assert!(t.err(Command::RegionWrite, &write, Errno::ENOSPC).is_empty());
    let seen = t.model.take_deviations();
    assert_eq!(seen.len(), 1, "another errno is a deviation: {seen:?}");
    assert_eq!(seen[0].deviation, crate::model::deviation::Deviation::OtherErrno);
}

#[test]
fn pre_copy_is_learnt_from_the_first_get_migration_reply_and_held_to() {
    let mut t = Talk::passive(MIGRATES);
    let (get, reply) = get_migration(1);
    assert!(t.ok(Command::DeviceFeature, &get, 0, &reply).is_empty(), "STOP_COPY only: learnt, not judged");
    assert!(t.get_state(MigState::Running).is_empty());
    assert!(t.set_refused(MigState::PreCopy, Errno::EINVAL).is_empty());
    assert_eq!(t.set_state(MigState::PreCopy).len(), 1, "PRE_COPY without offering it");
    let (_, with_pre_copy) = get_migration(1 | 4);
    assert_eq!(t.ok(Command::DeviceFeature, &get, 0, &with_pre_copy).len(), 1, "it changed its mind");
}

#[test]
fn a_device_may_refuse_an_arc_and_the_state_is_then_unknown() {
    let mut t = Talk::passive(MIGRATES);
    assert!(t.get_state(MigState::Running).is_empty());
    assert!(t.set_refused(MigState::Stop, Errno::EIO).is_empty());
    assert_eq!(t.model.state(), None);
    assert!(t.set_refused(MigState::Stop, Errno::EINVAL).is_empty(), "a state the model lost admits anything");
}

#[test]
fn a_resuming_device_judges_its_own_stream() {
    let mut t = Talk::passive(MIGRATES);
    assert!(t.set_state(MigState::Resuming).is_empty());
    assert!(t.set_state(MigState::Running).is_empty(), "RESUMING→RUNNING with no data seen: the device's call");
    let mut u = Talk::passive(MIGRATES);
    assert!(u.set_state(MigState::Resuming).is_empty());
    assert!(u.set_refused(MigState::Running, Errno::EBADMSG).is_empty());
}

#[test]
fn regions_are_learnt_from_the_replies_that_pass_by() {
    let mut t = Talk::passive(MIGRATES);
    assert!(t.get_state(MigState::Running).is_empty());
    let read = RegionAccess { offset: 0x1000, region: 2, count: 4 }.as_bytes().to_vec();
    let mut answer = read.clone();
    answer.extend_from_slice(&[0; 4]);
    assert!(t.ok(Command::RegionRead, &read, 0, &answer).is_empty(), "a region never described is the server's");
    let mut req = [0u8; 32];
    req[0] = 32;
    req[8] = 2;
    let mut reply = req;
    reply[4] = 3;
    reply[16..24].copy_from_slice(&0x1000u64.to_le_bytes());
    assert!(t.ok(Command::DeviceGetRegionInfo, &req, 0, &reply).is_empty());
    let found = t.ok(Command::RegionRead, &read, 0, &answer);
    assert_eq!(found.len(), 1, "a read past the size the server gave: {found:?}");
}

#[test]
fn a_new_client_finds_the_device_where_the_server_left_it() {
    let mut t = Talk::passive(MIGRATES);
    assert!(t.set_state(MigState::StopCopy).is_empty());
    t.model.event(Event::Disconnected);
    t.model.event(Event::Connected);
    assert_eq!(t.model.state(), None, "what a server does when its client leaves is its own choice");
    assert!(t.model.mappings().is_empty());
}

#[test]
fn a_server_that_does_not_advertise_migration_may_still_answer_device_feature() {
    let mut t = Talk::passive(r#"{"capabilities": {}}"#);
    let (get, reply) = get_migration(5);
    assert!(t.ok(Command::DeviceFeature, &get, 0, &reply).is_empty());
    let mut u = Talk::passive(r#"{"capabilities": {}}"#);
    assert!(u.err(Command::DeviceFeature, &get, Errno::ENOTTY).is_empty());
}
