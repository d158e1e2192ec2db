package sqlstore

import (
	"context"

	"github.com/berthhq/berth"
)

const userCols = `id, username, email, access_key, secret_hash, is_super_user, created_at`

// CreateUser records u. A clash on its ID, Username or AccessKey is
// CodeConflict.
func (s *Store) CreateUser(ctx context.Context, u berth.User) error {
	_, err := s.write.ExecContext(ctx, `INSERT INTO users (`+userCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		u.ID, u.Username, u.Email, u.AccessKey, u.SecretHash, u.IsSuperUser, s.d.Time(u.CreatedAt))
	return conflict(s.dbErr(err, "create user"), "a user with this id, username or access key already exists")
}

// UserByID returns the user with the given ID.
func (s *Store) UserByID(ctx context.Context, id string) (berth.User, error) {
	return s.user(ctx, `id = $1`, id, "user "+id)
}

// UserByAccessKey returns the user with the given access key.
func (s *Store) UserByAccessKey(ctx context.Context, accessKey string) (berth.User, error) {
	// The key is a credential, so it is not echoed in the error.
	return s.user(ctx, `access_key = $1`, accessKey, "user with this access key")
}

func (s *Store) user(ctx context.Context, where string, arg any, what string) (berth.User, error) {
	var u berth.User
	err := s.read.QueryRowContext(ctx, `SELECT `+userCols+` FROM users WHERE `+where, arg).Scan(
		&u.ID, &u.Username, &u.Email, &u.AccessKey, &u.SecretHash, &u.IsSuperUser, timeCol{s.d, &u.CreatedAt})
	if err != nil {
		return berth.User{}, s.notFound(err, "read user", "%s not found", what)
	}
	return u, nil
}

// CountUsers returns the number of users.
func (s *Store) CountUsers(ctx context.Context) (int, error) {
	var n int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*) FROM users`).Scan(&n); err != nil {
		return 0, s.dbErr(err, "count users")
	}
	return n, nil
}
