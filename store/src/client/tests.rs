use super::*;
use crate::server::StoreConfig;
use crate::value::Value;
use chc_proto::wire::Value as WV;

#[test]
fn in_process_round_trip_across_shards() {
    let store = Store::start(StoreConfig::in_memory(3)).unwrap();
    let mut c = store.client(1);
    for i in 0..300u32 {
        let k = ObjKey::shared(1, 1, i.to_be_bytes().to_vec());
        c.submit_nonblocking(k.incr(i64::from(i)));
    }
    c.sync().unwrap();
    assert_eq!(c.unacked(), 0);
    for i in (0..300u32).step_by(37) {
        let k = ObjKey::shared(1, 1, i.to_be_bytes().to_vec());
        assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(i64::from(i))));
    }
    // A read sees the client's earlier non-blocking updates on the same shard.
    let k = ObjKey::raw("x");
    for _ in 0..1000 {
        c.submit_nonblocking(k.incr(1));
    }
    assert_eq!(c.call(k.get()).unwrap().value, Some(WV::int(1000)));
    // Callbacks between two clients.
    let mut d = store.client(2);
    d.call(k.subscribe()).unwrap();
    c.call(k.set(&Value::Int(5))).unwrap();
    let p = d
        .wait_push(Duration::from_secs(5))
        .unwrap()
        .expect("a callback");
    assert_eq!(p.push.value, Some(WV::int(5)));
}
