package main

import "testing"

func TestParseUpFlagsDefaultsMatchTheSharedContract(t *testing.T) {
	o, err := parseUpFlags([]string{"--state", "/tmp/x"})
	if err != nil {
		t.Fatal(err)
	}
	if o.advertisedServer() != "https://10.244.0.1:6443" || o.localServer() != "https://127.0.0.1:6443" {
		t.Errorf("servers = %s, %s", o.advertisedServer(), o.localServer())
	}
	if o.serviceCIDR.String() != "10.96.0.0/16" || o.firstServiceIP.String() != "10.96.0.1" {
		t.Errorf("service range %s, first IP %s", o.serviceCIDR, o.firstServiceIP)
	}
}

func TestParseUpFlagsRejectsUnusableInput(t *testing.T) {
	for _, args := range [][]string{
		{}, // no state dir
		{"--state", "d", "--advertise-address", "127.0.0.1"}, // loopback is refused by the endpoint reconciler
		{"--state", "d", "--advertise-address", "nope"},
		{"--state", "d", "--service-cidr", "10.96.0.0"},
		{"--state", "d", "extra"},
	} {
		if _, err := parseUpFlags(args); err == nil {
			t.Errorf("parseUpFlags(%q) accepted", args)
		}
	}
}
