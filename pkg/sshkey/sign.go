package sshkey

import (
	"bytes"
	"fmt"

	"github.com/hiddeco/sshsig"
	"golang.org/x/crypto/ssh"
)

// SignArmored signs data with signer as an SSH signature (SSHSIG,
// PROTOCOL.sshsig: SHA-512, in namespace) and returns it armored
// ("-----BEGIN SSH SIGNATURE-----"), as `ssh-keygen -Y sign` writes it.
func SignArmored(data []byte, signer ssh.Signer, namespace string) ([]byte, error) {
	sig, err := sshsig.Sign(bytes.NewReader(data), signer, sshsig.HashSHA512, namespace)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	return sshsig.Armor(sig), nil
}

// VerifyArmored checks an armored SSH signature of data by key in
// namespace, as `ssh-keygen -Y verify` does; the error says what failed.
func VerifyArmored(data, armored []byte, key ssh.PublicKey, namespace string) error {
	sig, err := sshsig.Unarmor(armored)
	if err != nil {
		return err
	}
	return sshsig.Verify(bytes.NewReader(data), sig, key, sig.HashAlgorithm, namespace)
}
