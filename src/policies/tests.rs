use super::*;

#[test]
fn placeholder() {
    let s = render(&Settings::default(), &Options::default()).unwrap();
    println!("{s}");
    println!("{}", helm_template());
}
