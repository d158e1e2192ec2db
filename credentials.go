package berth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
)

// NewCredentials returns a fresh access key and secret. The key identifies
// the user (it is stored as is); the secret is shown once and only its hash
// is stored.
func NewCredentials() (accessKey, accessSecret string) {
	return "bk_" + rand.Text(), rand.Text() + rand.Text()
}

// HashSecret returns the stored form of an access secret. Secrets are long
// random strings, so a fast hash is enough: there is nothing to guess.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches reports, in constant time, whether secret hashes to hash.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}
