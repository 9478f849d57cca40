use std::io::{BufReader, Write};
use tracer_e2e::net::{connect, get_request};
use tracer_e2e::{own_service_name, read_response, Nginx, Peer, TestDir, Tracer};
#[test]
fn scratch() {
    let dir = TestDir::new("scratch");
    let nginx = Nginx::start(&dir, "");
    let stream = connect(nginx.addr());
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ex = |p: &str| { writer.write_all(get_request(p).as_bytes()).unwrap(); read_response(&mut reader, false).unwrap(); };
    ex("/pre");
    let tracer = Tracer::start(&dir, &[]);
    for _ in 0..5 { ex("/pre"); }
    tracer.barrier(&nginx);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let s = tracer.scrape();
    println!("own={}\n{}", own_service_name(), s.lines("http_client_request_duration_seconds_count", &[("service_name", &own_service_name())]));
    println!("{}", s.lines("http_server_request_duration_seconds_count", &[("http_route", "/pre")]));
    println!("{}", s.lines("tracer_", &[]));
    println!("{}", tracer.stderr());
}
