package http

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/uuid"

	"github.com/berthhq/berth"
)

// Tokens issues and verifies HS256 bearer tokens.
type Tokens struct {
	Secret []byte
	TTL    time.Duration
	now    func() time.Time
}

// Issue returns a signed token for user u.
func (t *Tokens) Issue(u berth.User) (string, error) {
	now := t.clock()
	claims := jwt.RegisteredClaims{
		Subject:   u.ID,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(t.TTL)),
		Issuer:    "berth",
		ID:        uuid.NewString(),
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(t.Secret)
}

// Verify returns the user id a token was issued to. Only HS256 is accepted,
// so "alg: none" and algorithm-confusion tokens fail, as do bad signatures
// and expired tokens.
func (t *Tokens) Verify(token string) (string, error) {
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return t.Secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuer("berth"),
		jwt.WithTimeFunc(t.clock),
	)
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "", berth.Errorf(berth.CodeUnauthorized, "token expired; log in again")
	case err != nil:
		return "", berth.Errorf(berth.CodeUnauthorized, "invalid token")
	case claims.Subject == "":
		return "", berth.Errorf(berth.CodeUnauthorized, "invalid token")
	}
	return claims.Subject, nil
}

func (t *Tokens) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

type userKey struct{}

// authenticate returns the caller of r, from its bearer token.
func (s *Server) authenticate(r *http.Request) (berth.User, error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	if h == "" {
		return berth.User{}, berth.Errorf(berth.CodeUnauthorized, "missing bearer token (Authorization: Bearer <token>)")
	}
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return berth.User{}, berth.Errorf(berth.CodeUnauthorized, "malformed Authorization header; want \"Bearer <token>\"")
	}
	id, err := s.tokens.Verify(strings.TrimSpace(token))
	if err != nil {
		return berth.User{}, err
	}
	u, err := s.store.UserByID(r.Context(), id)
	if err != nil {
		if berth.ErrorCode(err) == berth.CodeNotFound {
			return berth.User{}, berth.Errorf(berth.CodeUnauthorized, "the user of this token no longer exists")
		}
		return berth.User{}, err
	}
	return u, nil
}

// authed wraps h so that it runs only for an authenticated caller.
func (s *Server) authed(h func(w http.ResponseWriter, r *http.Request, u berth.User)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u, err := s.authenticate(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), userKey{}, u)), u)
	}
}

// mayManage reports whether u may manage agent a: its owner or a superuser.
func mayManage(u berth.User, a berth.Agent) error {
	if u.IsSuperUser || a.OwnerID == u.ID {
		return nil
	}
	return berth.Errorf(berth.CodeForbidden, "you may not manage agent %q", a.Name)
}

type loginRequest struct {
	AccessKey    string `json:"access_key"`
	AccessSecret string `json:"access_secret"`
}

type loginResponse struct {
	Token       string `json:"token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	IsSuperUser bool   `json:"is_super_user"`
	UserID      string `json:"user_id"`
	Username    string `json:"username"`
}

func (s *Server) handleLogin(w http.ResponseWriter, r *http.Request) {
	var req loginRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.AccessKey == "" || req.AccessSecret == "" {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "access_key and access_secret are required"))
		return
	}
	bad := berth.Errorf(berth.CodeUnauthorized, "invalid access key or secret")
	u, err := s.store.UserByAccessKey(r.Context(), req.AccessKey)
	if err != nil {
		if berth.ErrorCode(err) == berth.CodeNotFound {
			// Spend the same work as a real check, so timing does not
			// reveal which keys exist.
			berth.SecretMatches(req.AccessSecret, "")
			s.writeError(w, r, bad)
			return
		}
		s.writeError(w, r, err)
		return
	}
	if !berth.SecretMatches(req.AccessSecret, u.SecretHash) {
		s.writeError(w, r, bad)
		return
	}
	tok, err := s.tokens.Issue(u)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.log.Info("login", "user", u.Username)
	writeJSON(w, http.StatusOK, loginResponse{Token: tok, TokenType: "bearer", ExpiresIn: int64(s.tokens.TTL.Seconds()),
		IsSuperUser: u.IsSuperUser, UserID: u.ID, Username: u.Username})
}

type registerRequest struct {
	Username    string `json:"username"`
	Email       string `json:"email"`
	IsSuperUser *bool  `json:"is_super_user"`
}

type registerResponse struct {
	UserID       string `json:"user_id"`
	Username     string `json:"username"`
	Email        string `json:"email"`
	Role         string `json:"role"`
	Status       string `json:"status"`
	AccessKey    string `json:"access_key"`
	AccessSecret string `json:"access_secret"`
	CreatedOn    string `json:"created_on"`
	Message      string `json:"message"`
}

func (s *Server) handleRegister(w http.ResponseWriter, r *http.Request, caller berth.User) {
	if !caller.IsSuperUser {
		s.writeError(w, r, berth.Errorf(berth.CodeForbidden, "only a superuser may register users"))
		return
	}
	var req registerRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		s.writeError(w, r, err)
		return
	}
	req.Username = strings.TrimSpace(req.Username)
	if !berth.ValidName(req.Username) {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "username must match ^[a-z0-9][a-z0-9-]{0,62}$"))
		return
	}
	if req.Email != "" && !strings.Contains(req.Email, "@") {
		s.writeError(w, r, berth.Errorf(berth.CodeInvalidBody, "email %q is not an email address", req.Email))
		return
	}
	key, secret := berth.NewCredentials()
	u := berth.User{
		ID:          uuid.NewString(),
		Username:    req.Username,
		Email:       req.Email,
		AccessKey:   key,
		SecretHash:  berth.HashSecret(secret),
		IsSuperUser: req.IsSuperUser != nil && *req.IsSuperUser,
		CreatedAt:   time.Now().UTC(),
	}
	if err := s.store.CreateUser(r.Context(), u); err != nil {
		if berth.ErrorCode(err) == berth.CodeConflict {
			err = berth.Errorf(berth.CodeConflict, "user %q already exists", u.Username)
		}
		s.writeError(w, r, err)
		return
	}
	role := "user"
	if u.IsSuperUser {
		role = "superuser"
	}
	s.log.Info("user registered", "actor", caller.Username, "user", u.Username, "role", role)
	writeJSON(w, http.StatusCreated, registerResponse{
		UserID: u.ID, Username: u.Username, Email: u.Email, Role: role, Status: "active",
		AccessKey: key, AccessSecret: secret, CreatedOn: u.CreatedAt.Format(time.RFC3339),
		Message: "User registered. The access secret is shown only once.",
	})
}
