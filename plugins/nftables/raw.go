package main

import (
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// exprKinds returns, for each rule of Cordon's table (by handle), the
// kinds of its expressions as the kernel names them ("meta", "cmp",
// "payload", …), read with a raw NFT_MSG_GETRULE dump (nf_tables netlink,
// include/uapi/linux/netfilter/nf_tables.h). google/nftables leaves out
// the expressions it cannot decode (rt, socket, fwd, dup, …), so a rule
// with one added would compare equal by its decoded expressions alone:
// the count and kinds here are compared too.
func exprKinds() (map[uint64][]string, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_RULE_TABLE, TableName)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		// struct nfgenmsg: family, version, resource id (big endian).
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("dump rules of inet %s: %w", TableName, err)
	}
	out := map[uint64][]string{}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var handle uint64
		var kinds []string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_RULE_HANDLE:
				handle = ad.Uint64()
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(list *netlink.AttributeDecoder) error {
					for list.Next() {
						if list.Type() != unix.NFTA_LIST_ELEM {
							continue
						}
						list.Nested(func(e *netlink.AttributeDecoder) error {
							for e.Next() {
								if e.Type() == unix.NFTA_EXPR_NAME {
									kinds = append(kinds, e.String())
								}
							}
							return nil
						})
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode a rule of inet %s: %w", TableName, err)
		}
		out[handle] = kinds
	}
	return out, nil
}
